"""Shared options are documented once (a doc fragment) and specified once (args_common); the two
must name the same options with the same types, else ansible-doc tells users one thing and the
module accepts another."""

import pytest
import yaml
from ansible_collections.hfl.orchestration.plugins.doc_fragments import pipeline, tls_client
from ansible_collections.hfl.orchestration.plugins.module_utils import args_common


@pytest.mark.parametrize("fragment, spec", [
    (tls_client, args_common.TLS_CLIENT_ARG_SPEC),
    (pipeline, args_common.PIPELINE_ARG_SPEC),
])
def test_fragment_documents_exactly_its_spec(fragment, spec):
    options = yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION)["options"]
    assert {name: doc["type"] for name, doc in options.items()} == \
        {name: arg["type"] for name, arg in spec.items()}

