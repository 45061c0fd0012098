#!/bin/sh
# Build the DFS container image from this checkout.
#
#   packaging/docker/build.sh OUTDIR
#
# Builds wheels of the project and its dependencies for Python 3.11 into
# OUTDIR/docker-context/wheels (with the pip of $PYTHON, default the checkout's .venv or
# python3), builds the image from packaging/docker/Dockerfile on $DFS_BASE_IMAGE
# (default debian:12-slim: any local Debian 12 image) and tags it $DFS_IMAGE
# (default dfs:VERSION). With DFS_SAVE=1 it also writes OUTDIR/dfs-image-VERSION.tar
# (docker save). $DOCKER names the docker client (default: docker).
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: packaging/docker/build.sh OUTDIR" >&2
    exit 64
fi
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
docker=${DOCKER:-docker}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$top/.venv/bin/python" ]; then PYTHON=$top/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "build.sh: $PYTHON is not Python 3.11, the Python of Debian 12: set PYTHON" >&2
    exit 69
}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$top/dfs/__init__.py")
image=${DFS_IMAGE:-dfs:$version}
base=${DFS_BASE_IMAGE:-debian:12-slim}

context=$out/docker-context
rm -rf "$context"
mkdir -p "$context/wheels"
# Building in a copy keeps build/ and *.egg-info of the checkout out of the way of
# other builds running from the same tree.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$top" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.hypothesis \
    -cf - . | tar -C "$src" -xf -
if ! "$PYTHON" -m pip wheel --quiet --wheel-dir "$context/wheels" "$src" >"$out/pip-wheel.log" 2>&1; then
    tail -n 30 "$out/pip-wheel.log" >&2
    echo "build.sh: building the wheels failed (log: $out/pip-wheel.log)" >&2
    exit 1
fi
cp "$here/Dockerfile" "$here/dfs-entrypoint.py" "$context/"

"$docker" build --quiet --build-arg "BASE=$base" --tag "$image" "$context" >/dev/null
echo "built image $image on $base"
if [ "${DFS_SAVE:-0}" = 1 ]; then
    "$docker" save --output "$out/dfs-image-$version.tar" "$image"
    echo "saved $out/dfs-image-$version.tar"
fi
