#!/usr/bin/env python3
"""Point action.yml at the published image: the release workflow's one rewrite.

On main, `runs.image` is `Dockerfile`, so the repository's own CI (`uses: ./`) builds and tests
the image from source. On a release tag, action.yml must name the image the release workflow
pushed, so a user's `uses: owner/db-deploy-action@v1` pulls it instead of rebuilding the
Dockerfile in every job:

    runs:
      using: "docker"
      image: "docker://ghcr.io/<owner>/db-deploy-action@sha256:<digest>" # 1.2.3

Pinned by digest, not by tag: a registry tag can be re-pushed, a digest cannot, so what a
release tag runs never changes. The version stays on the line as a comment (`name:tag@digest`
is not used: Docker ignores the tag there, other engines reject the form, and docker/cli#7181
proposes rejecting it too). Only that one line changes (inputs, outputs and comments stay
byte-identical), and the script refuses anything it does not expect. Standard library only: it
runs on the bare runner before any setup step.

Usage: pin_action_image.py --image ghcr.io/OWNER/db-deploy-action --version 1.2.3 \
           --digest sha256:... [action.yml]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

IMAGE_LINE = re.compile(r'^(?P<indent>[ ]+)image:[ ]*(?P<q>["\']?)Dockerfile(?P=q)[ ]*$', re.M)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME = re.compile(rf"^[a-z0-9.-]+(?::[0-9]+)?(?:/{_COMPONENT})+$")
VERSION = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def pinned_reference(image: str, version: str, digest: str) -> str:
    if not IMAGE_NAME.match(image):
        raise ValueError(f"not a lower-case image name without tag: {image!r}")
    if not VERSION.match(version):
        raise ValueError(f"not a release version X.Y.Z: {version!r}")
    if not DIGEST.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return f"docker://{image}@{digest}"


def pin(text: str, reference: str, version: str) -> str:
    matches = list(IMAGE_LINE.finditer(text))
    if len(matches) != 1:
        raise ValueError(
            f"expected exactly one `image: Dockerfile` line in action.yml, found {len(matches)}"
        )
    m = matches[0]
    line = f'{m.group("indent")}image: "{reference}" # {version}'
    return text[: m.start()] + line + text[m.end() :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="e.g. ghcr.io/acme/db-deploy-action")
    parser.add_argument("--version", required=True, help="release version X.Y.Z (no v)")
    parser.add_argument("--digest", required=True, help="sha256:... of the pushed image index")
    parser.add_argument("action", nargs="?", default="action.yml", type=Path)
    args = parser.parse_args(argv)
    try:
        reference = pinned_reference(args.image, args.version, args.digest)
        text = args.action.read_text(encoding="utf-8")
        args.action.write_text(pin(text, reference, args.version), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"pin_action_image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.action}: runs.image = {reference} (version {args.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
