# Copyright: hfl.orchestration developers
# Apache License 2.0
"""The option that picks one pipeline of an inventory; its argument spec is
plugins/module_utils/args_common.py's PIPELINE_ARG_SPEC (keep the two in step)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  pipeline:
    description:
      - With several pipelines in one inventory (hosts of group C(hfl_cluster) with different
        C(hfl_pipeline)), the one to act on.
      - Without it, the inventory must hold exactly one pipeline.
    type: str
"""
