"""A page in headless Chromium, as a reader's browser shows it, with no network."""

from __future__ import annotations

from pathlib import Path

from hfl_helpers import run_group

CHROMIUM = "/usr/bin/chromium"
# Counts the images the browser decoded into the body's data-loaded attribute ("ok/all").
_PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
          "document.body.setAttribute('data-loaded',i.filter(x=>x.complete&&x.naturalWidth>0)"
          ".length+'/'+i.length)})</script>")


def _flags(workdir: Path) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={workdir / 'chromium-profile'}",
            "--virtual-time-budget=5000"]


def images_loaded(page: Path, workdir: Path) -> str:
    """'decoded/all' images of ``page`` (read from a copy with a probe script added)."""
    probe = workdir / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = run_group([*_flags(workdir), "--dump-dom", probe.as_uri()], capture_output=True,
                    text=True, timeout=120, check=True).stdout
    marker = 'data-loaded="'
    return dom[dom.index(marker) + len(marker):].split('"', 1)[0] if marker in dom else "none"


def screenshot(page: Path, out: Path, workdir: Path, size: str = "1050,1600") -> Path:
    run_group([*_flags(workdir), f"--screenshot={out}", f"--window-size={size}", page.as_uri()],
              capture_output=True, timeout=120, check=True)
    return out
