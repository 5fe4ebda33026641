#!/usr/bin/env bash
# Prints the Debian package version of this checkout, from
# `git describe --tags --always --dirty` and the commit date (UTC):
#
#   v1.2.3                      1.2.3
#   v1.2.3-rc.1                 1.2.3~rc.1            (sorts before 1.2.3)
#   v1.2.3-4-gabc1234           1.2.3+git20250102.abc1234
#   abc1234 (no tag)            0.0.0~git20250102.abc1234
#   ...-dirty                   the above + .dirty    (v1.2.3-dirty: 1.2.3+dirty)
#
# With two arguments, DESCRIBE and DATE (YYYYMMDD), it converts those instead
# of asking git (the tests use this).
set -euo pipefail

if [ $# -eq 2 ]; then
	describe=$1 date=$2
elif [ $# -eq 0 ]; then
	cd "$(dirname "$0")"
	if ! describe=$(git describe --tags --always --dirty 2>/dev/null); then
		echo "version.sh: not a git checkout; give the version (make package PACKAGE_VERSION=...)" >&2
		exit 1
	fi
	date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d)
else
	echo "usage: version.sh [DESCRIBE DATE]" >&2
	exit 2
fi

dirty=
if [[ $describe == *-dirty ]]; then
	dirty=1
	describe=${describe%-dirty}
fi

if [[ $describe =~ ^[0-9a-f]{7,40}$ ]]; then
	# No tag: a commit (checked first: an abbreviated hash may look like a
	# version, 3e52933).
	version="0.0.0~git$date.$describe"
	[ -n "$dirty" ] && version+=".dirty"
elif [[ $describe =~ ^v?([0-9][0-9A-Za-z.]*)(-([0-9A-Za-z.]+))?-([0-9]+)-g([0-9a-f]+)$ ]]; then
	# A tag, then commits after it.
	version=${BASH_REMATCH[1]}
	[ -n "${BASH_REMATCH[3]}" ] && version+="~${BASH_REMATCH[3]}"
	version+="+git$date.${BASH_REMATCH[5]}"
	[ -n "$dirty" ] && version+=".dirty"
elif [[ $describe =~ ^v?([0-9][0-9A-Za-z.]*)(-([0-9A-Za-z.]+))?$ ]]; then
	# Exactly a tag.
	version=${BASH_REMATCH[1]}
	[ -n "${BASH_REMATCH[3]}" ] && version+="~${BASH_REMATCH[3]}"
	[ -n "$dirty" ] && version+="+dirty"
else
	echo "version.sh: cannot make a Debian version of git describe output \"$describe\"" >&2
	exit 1
fi
if [[ ! $date =~ ^[0-9]{8}$ ]]; then
	echo "version.sh: date \"$date\" is not YYYYMMDD" >&2
	exit 1
fi
if command -v dpkg >/dev/null && ! dpkg --validate-version "$version" 2>/dev/null; then
	echo "version.sh: \"$version\" (from \"$describe\") is not a valid Debian version" >&2
	exit 1
fi
echo "$version"
