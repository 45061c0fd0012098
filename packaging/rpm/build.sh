#!/usr/bin/env bash
# Builds the DFS binary RPM from this checkout into OUTDIR.
#
#   packaging/rpm/build.sh OUTDIR
#
# The version comes from dfs/__init__.py alone and reaches the spec through --define.
# rpmbuild runs in a temporary _topdir, so nothing is written under ~/rpmbuild.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
for tool in rpmbuild tar; do
    command -v "$tool" >/dev/null || { echo "packaging/rpm/build.sh: $tool not found (apt-get install rpm tar)" >&2; exit 1; }
done

root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$1"
outdir="$(cd "$1" && pwd)"

version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$root/dfs/__init__.py")"
[ -n "$version" ] || { echo "packaging/rpm/build.sh: no __version__ in $root/dfs/__init__.py" >&2; exit 1; }
# RPM versions may not contain '-'; PEP 440 versions never do.
case "$version" in *-*) echo "packaging/rpm/build.sh: version $version contains '-'" >&2; exit 1;; esac

# A plain system PATH: pyenv shims or a developer's venv early on PATH would otherwise
# give rpmbuild a different python3 than the one the package depends on.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION

topdir="$(mktemp -d)"
trap 'rm -rf "$topdir"' EXIT
mkdir -p "$topdir/SOURCES"

# The source tarball holds the files git knows or would add (tracked and untracked,
# not ignored): build output and virtualenvs of the checkout stay out.
tarball="$topdir/SOURCES/dfs-$version.tar.gz"
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | tar -C "$root" --null --files-from=- --ignore-failed-read \
            --transform "s,^,dfs-$version/," -czf "$tarball" 2>/dev/null
else
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ \
        --transform "s,^\\.,dfs-$version," -czf "$tarball" .
fi

# The changelog date is that of the last commit, so that rebuilding a commit gives the
# same header (rpmlint wants a changelog entry for the version being built).
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
changelog_date="$(LC_ALL=C date -u -d "@$epoch" '+%a %b %d %Y')"

# The virtualenv is made with the versioned interpreter (python3.11, not python3), so the
# package depends on that exact interpreter on the target.
python="$(/usr/bin/python3 -c 'import sys; print("/usr/bin/python%d.%d" % sys.version_info[:2])')"

# On an RPM-based build host rpmbuild checks BuildRequires; on Debian the rpm database
# is empty and knows nothing of the system's python3, so the check is skipped.
nodeps=()
if ! rpm -q --quiet --whatprovides "$python" 2>/dev/null; then
    nodeps=(--nodeps)
fi

rpmbuild -bb "${nodeps[@]}" \
    --define "_topdir $topdir" \
    --define "dfs_version $version" \
    --define "dfs_changelog_date $changelog_date" \
    --define "dfs_python $python" \
    "$root/packaging/rpm/dfs.spec" >"$topdir/build.log" 2>&1 || {
    tail -n 40 "$topdir/build.log" >&2
    echo "packaging/rpm/build.sh: rpmbuild failed (last lines above)" >&2
    exit 1
}

find "$topdir/RPMS" -name '*.rpm' -exec cp {} "$outdir/" \; -exec sh -c 'echo "$1/$(basename "$2")"' _ "$outdir" {} \;
