#!/usr/bin/env bash
# Refreshes the vendored uPlot (https://github.com/leeoniya/uPlot, MIT) from its npm package: the minified
# browser build, its stylesheet and its licence. Usage: web/static/vendor/update-uplot.sh [VERSION]
# (default: the version pinned below). Needs npm and network access; the broker itself embeds these files and
# never loads anything from the network.
set -euo pipefail
VERSION=${1:-1.6.32}
dir=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
tar -xzf "$tmp/uplot-$VERSION.tgz" -C "$tmp"
install -m 0644 "$tmp/package/dist/uPlot.iife.min.js" "$dir/uPlot.iife.min.js"
install -m 0644 "$tmp/package/dist/uPlot.min.css" "$dir/uPlot.min.css"
install -m 0644 "$tmp/package/LICENSE" "$dir/uPlot.LICENSE"
echo "$VERSION" >"$dir/uPlot.VERSION"
sed -i "s/^VERSION=\${1:-[^}]*}/VERSION=\${1:-$VERSION}/" "$0"
echo "uPlot $VERSION vendored in $dir"
