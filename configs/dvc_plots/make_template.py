"""Rebuild template.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so `dvc plots show`
and `dvc plots diff` need no network (DVC's own page loads them from a CDN). From the repository root:

    (cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
    python configs/dvc_plots/make_template.py /tmp

`.dvc/config` points DVC at the result (`[plots] html_template`). The versions are the ones dvc-render names.
"""
import sys
import tarfile
from pathlib import Path

LIBS = [("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")]
HERE = Path(__file__).parent


def main(tarballs: Path):
    scripts = []
    for name, version in LIBS:
        with tarfile.open(tarballs / f"{name}-{version}.tgz") as tar:
            code = tar.extractfile(f"package/build/{name}.min.js").read().decode()
        assert "</script" not in code and "{plot_divs}" not in code
        scripts.append(f"<script>/* {name} {version} (BSD-3-Clause, configs/dvc_plots/LICENSES.md), from the npm registry */\n"
                       f"{code}\n</script>")
    page = (HERE / "page.html").read_text().replace("<!-- scripts -->", "\n".join(scripts))
    (HERE / "template.html").write_text(page)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
