#!/usr/bin/env bash
# Demonstrates the attestation core end to end: a software TPM is manufactured with an EK certificate,
# measured, enrolled with the provider's AK CA, and quoted; the CLI then shows and verifies the evidence, and
# rejects it against a policy that expects another node image.
set -euo pipefail
cd "$(dirname "$0")/.."
out=_out/evidence
go run ./tools/evidence -out "$out"
cli=bin/constellation

echo; echo "$ constellation attestation show $out/evidence.json"
$cli attestation show "$out/evidence.json"

echo; echo "$ constellation attestation verify ... (the expected node image)"
$cli attestation verify --evidence "$out/evidence.json" --measurements "$out/measurements.json" \
  --ca "$out/ca.pem" --nonce "$(cat $out/nonce.hex)" --user-data "$(cat $out/user-data.hex)"

echo; echo "$ constellation attestation verify ... (a policy that expects another node image)"
python3 - "$out" <<'PY'
import json, sys
p = sys.argv[1] + "/measurements.json"
m = json.load(open(p))
m["4"]["expected"] = "cd" * 32
json.dump(m, open(sys.argv[1] + "/other-image.json", "w"), indent=2)
PY
set +e
$cli attestation verify --evidence "$out/evidence.json" --measurements "$out/other-image.json" \
  --ca "$out/ca.pem" --nonce "$(cat $out/nonce.hex)"
code=$?
set -e
echo "(exit code $code: the evidence does not match the policy)"
[ "$code" -eq 1 ]
