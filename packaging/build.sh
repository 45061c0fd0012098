#!/usr/bin/env bash
# One entry point for every artefact: packaging/build.sh deb|rpm|docker OUTDIR.
# The version comes from dfs/__init__.py (__version__) alone.
set -euo pipefail

usage() {
    echo "usage: packaging/build.sh deb|rpm|docker OUTDIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
kind=$1
[ -n "$2" ] || usage
case $kind in deb | rpm | docker) ;; *) usage ;; esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
mkdir -p "$2" || { echo "build.sh: cannot create $2" >&2; exit 1; }
outdir=$(cd "$2" && pwd)
version=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/dfs/__init__.py")
[ -n "$version" ] || { echo "build.sh: no __version__ in dfs/__init__.py" >&2; exit 1; }
export DFS_VERSION=$version

# The other artefacts have their own scripts beside this one.
if [ "$kind" != deb ]; then
    script=$here/$kind/build.sh
    [ -f "$script" ] || { echo "build.sh: $kind: packaging/$kind/build.sh does not exist" >&2; exit 1; }
    exec bash "$script" "$outdir"
fi

for tool in dpkg-buildpackage dh /usr/bin/python3.11; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: deb: $tool is missing (apt-get install dpkg-dev debhelper python3.11-venv python3-pip)" >&2
        exit 1
    }
done

# Build from a copy holding only the checkout's files (not .venv, build/, caches), so
# the working tree stays clean and nothing local leaks into the package.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/dfs-$version
mkdir "$src"
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    # Tracked and new files; --ignore-failed-read skips files deleted but not committed.
    git -C "$root" ls-files -z --cached --others --exclude-standard |
        tar -C "$root" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$src" -xf -
else
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$src" -xf -
fi
cp -r "$here/debian" "$src/debian"
cat >"$src/debian/changelog" <<CHANGELOG
dfs ($version) bookworm; urgency=medium

  * Release $version, built from the source tree by packaging/build.sh.

 -- DFS developers <dfs@example.org>  $(date -R)
CHANGELOG

# A plain system PATH: tools from pyenv or a virtualenv ahead of Debian's break the build.
(cd "$src" && env -u VIRTUAL_ENV -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "build.sh: deb: dpkg-buildpackage failed (last lines above)" >&2
    exit 1
}
cp "$work"/dfs_"$version"_*.deb "$outdir"/
ls "$outdir"/dfs_"$version"_*.deb
