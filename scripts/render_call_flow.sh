#!/usr/bin/env bash
# Render docs/call_flow.puml to ./call_flow.png (the diagram the README shows).
# Needs PlantUML and Java: apt-get install -y plantuml
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v plantuml >/dev/null; then
  echo "plantuml is not installed: apt-get install -y plantuml" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# PlantUML names the PNG after the @startuml name (call_flow); render aside, then move it.
plantuml -tpng -charset UTF-8 -failfast2 -o "$out" docs/call_flow.puml
mv "$out/call_flow.png" call_flow.png
echo "wrote call_flow.png"
