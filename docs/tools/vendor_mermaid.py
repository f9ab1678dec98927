"""Put Mermaid (the diagrams' renderer) where the site's build finds it: docs/tools/vendor/mermaid.min.js, taken from
its npm package with npm. Run once after `pip install -e '.[docs]'` (needs npm and the npm registry); the build and
the site then need no network: the file is copied into the site, and no page loads anything from a CDN.

    python docs/tools/vendor_mermaid.py
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "12.3.0"  # the npm package's version; the file inside it is dist/mermaid.min.js
TARGET = Path(__file__).resolve().parent / "vendor" / "mermaid.min.js"


STAMP = TARGET.with_name("VERSION")


def main():
    if TARGET.is_file() and STAMP.is_file() and STAMP.read_text().strip() == f"mermaid@{VERSION}":
        print(f"{TARGET} is mermaid {VERSION} already")
        return 0
    with tempfile.TemporaryDirectory() as work:
        try:
            subprocess.run(["npm", "pack", f"mermaid@{VERSION}", "--silent", "--pack-destination", work], check=True,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"error: could not fetch the mermaid npm package with npm ({e}); install Node.js and npm",
                  file=sys.stderr)
            return 1
        with tarfile.open(Path(work) / f"mermaid-{VERSION}.tgz") as archive:
            data = archive.extractfile("package/dist/mermaid.min.js").read()
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(data)
    STAMP.write_text(f"mermaid@{VERSION}\n")
    print(f"wrote {TARGET} (mermaid {VERSION}, {len(data) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
