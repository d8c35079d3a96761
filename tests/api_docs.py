"""Checks JSON documents against a JSON Schema (draft 2020-12) for tests/api_docs.rs.

Reads {"schema": PATH, "cases": [{"name": str, "instance": any, "valid": bool}]} on stdin,
checks the schema against its meta-schema, then each case: a `valid` one must validate, any
other must be refused. Prints one line per mismatch and exits 1 if there was any.
"""

import json
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match


def main() -> int:
    request = json.load(sys.stdin)
    with open(request["schema"], encoding="utf-8") as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    mismatches = 0
    for case in request["cases"]:
        error = best_match(validator.iter_errors(case["instance"]))
        if case["valid"] and error is not None:
            mismatches += 1
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            print(f"{case['name']}: refused by the schema at {where}: {error.message}")
        elif not case["valid"] and error is None:
            mismatches += 1
            print(f"{case['name']}: accepted by the schema, but the server refuses it")
    print(f"{len(request['cases'])} documents checked, {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
