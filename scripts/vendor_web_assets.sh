#!/usr/bin/env bash
# Vendor the browser libraries the HTML reports load, so they render offline.
#
# DVC's `dvc plots show` page and GX's data docs load their scripts, styles and icon fonts from
# CDNs: offline they show a blank page and unstyled tables without icons. This fetches the very
# versions they reference from the npm registry (`npm pack`) and writes
#   .dvc/plots/offline.html          the `dvc plots show` template (.dvc/config plots.html_template),
#                                    vega, vega-lite and vega-embed inlined: the page is one file
#                                    wherever `--out` puts it; .dvc/plots/licenses/ beside it
#   tasks/lib/core/data_docs_assets/ what the validate stage copies into data_docs/static/vendor/
#                                    (tasks/lib/core/validation.py maps each CDN address to it)
# with each package's licence. Run it from the project folder to move to other versions (and
# change the addresses in validation.py to what the new GX references).
#
#     bash scripts/vendor_web_assets.sh
set -euo pipefail

project=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# What DVC's renderer (dvc_render/vega.py VegaRenderer.SCRIPTS) and GX's page templates
# (great_expectations/render/view/templates/*.j2) reference.
packages=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
  bootstrap@4.3.1 jquery@3.7.1 popper.js@1.12.9 @fortawesome/fontawesome-free@6.6.0
  bootstrap-table@1.19.1 bootstrap-datepicker@1.9.0 @forevolve/bootstrap-dark@1.1.0)
(cd "$work" && npm pack --silent "${packages[@]}" >/dev/null)
for archive in "$work"/*.tgz; do
  name=$(basename "$archive" .tgz)
  mkdir -p "$work/$name" && tar xzf "$archive" -C "$work/$name" --strip-components=1
done

# vendor PACKAGE_FOLDER DEST FILE...: copy files (paths inside the package) and its licence
vendor() {
  local from="$work/$1" to=$2
  shift 2
  mkdir -p "$to"
  for file in "$@"; do
    mkdir -p "$to/$(dirname "$file")" && cp "$from/$file" "$to/$file"
  done
  for licence in LICENSE LICENSE.txt LICENSE.md; do
    if [[ -f $from/$licence ]]; then cp "$from/$licence" "$to/"; fi
  done
}

plots="$project/.dvc/plots"
rm -rf "$plots" && mkdir -p "$plots/licenses"
for name in vega-5.20.2 vega-lite-5.2.0 vega-embed-6.18.2; do
  cp "$work/$name/LICENSE" "$plots/licenses/${name%-*}.txt"
done
{
  # DVC fills {refresh_tag} and {plot_divs}; no {scripts}: that would add its CDN tags back
  printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n'
  for script in vega-5.20.2/build/vega.min.js vega-lite-5.2.0/build/vega-lite.min.js \
    vega-embed-6.18.2/build/vega-embed.min.js; do
    printf '    <script type="text/javascript">\n'
    cat "$work/$script"
    printf '\n    </script>\n'
  done
  printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n'
  printf '</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
} >"$plots/offline.html"

assets="$project/tasks/lib/core/data_docs_assets"
rm -rf "$assets"
vendor bootstrap-4.3.1 "$assets/bootstrap" dist/css/bootstrap.min.css dist/js/bootstrap.min.js
vendor jquery-3.7.1 "$assets/jquery" dist/jquery.min.js
vendor popper.js-1.12.9 "$assets/popper.js" dist/umd/popper.min.js  # licence: the file's header
vendor fortawesome-fontawesome-free-6.6.0 "$assets/fontawesome-free" css/all.min.css \
  webfonts/fa-brands-400.woff2 webfonts/fa-regular-400.woff2 webfonts/fa-solid-900.woff2 \
  webfonts/fa-v4compatibility.woff2  # the .ttf fallbacks are left out: browsers take woff2
vendor bootstrap-table-1.19.1 "$assets/bootstrap-table" dist/bootstrap-table.min.css \
  dist/bootstrap-table.min.js dist/extensions/filter-control/bootstrap-table-filter-control.min.css \
  dist/extensions/filter-control/bootstrap-table-filter-control.min.js
vendor bootstrap-datepicker-1.9.0 "$assets/bootstrap-datepicker" \
  dist/css/bootstrap-datepicker.min.css dist/js/bootstrap-datepicker.min.js
vendor forevolve-bootstrap-dark-1.1.0 "$assets/bootstrap-dark" \
  dist/css/bootstrap-prefers-dark.min.css  # GX links the unminified one: the same sheet
echo "vendored into $plots and $assets"
