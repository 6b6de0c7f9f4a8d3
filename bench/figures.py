"""Figures for the reports: small PNGs, torch-free (the load client and the Ray bench import this).

Run as `python -m bench.figures PNG ...` to shrink PNGs written before this module existed."""

from __future__ import annotations

import sys
from pathlib import Path


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as a 256-colour PNG and close it.

    Plots hold a few flat colours, so a palette keeps them as they look at about a third of the
    bytes: every GPU call carries the repo, bench/results included, within 64 MiB."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image  # matplotlib's own dependency

    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=dpi)
    plt.close(fig)
    rendered.seek(0)
    palette_png(Image.open(rendered), path)


def palette_png(image, path: Path) -> None:
    """`image` as an optimised 256-colour PNG at `path`, without dithering (flat colours stay flat)."""
    from PIL import Image

    quantized = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    quantized.save(path, format="PNG", optimize=True)


if __name__ == "__main__":
    from PIL import Image

    for name in sys.argv[1:]:
        palette_png(Image.open(name), Path(name))
