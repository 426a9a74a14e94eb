"""Renders deploy/helm/palisade with Helm and validates every document offline against the
Kubernetes API's JSON schemas (kubernetes-validate, strict: unknown fields are errors), for
each Kubernetes version asked for. Prints the rendered documents as one JSON array on stdout
(for the test's own assertions); problems go to stderr, with exit status 1.

  check_chart.py CHART --k8s 1.25.0 --k8s 1.37.0 [-- helm template flags: --set a=b, -f FILE]

Runs in the venv of tests-fixtures/deploy/setup (helm is its bin/helm).
"""

import json
import os
import subprocess
import sys

import kubernetes_validate
import yaml


def main(argv):
    if "--" in argv:
        at = argv.index("--")
        own, helm_args = argv[:at], argv[at + 1:]
    else:
        own, helm_args = argv, []
    chart = own[0]
    versions = [own[i + 1] for i, a in enumerate(own) if a == "--k8s"] or ["1.37.0"]
    helm = os.path.join(os.path.dirname(sys.executable), "helm")
    rendered = subprocess.run(
        [helm, "template", "palisade", chart, *helm_args],
        capture_output=True, text=True,
    )
    if rendered.returncode != 0:
        sys.stderr.write("helm template failed:\n" + rendered.stderr)
        return 1
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d is not None]
    problems = []
    if not docs:
        problems.append("helm template rendered no document")
    for doc in docs:
        what = "%s/%s" % (doc.get("kind"), doc.get("metadata", {}).get("name"))
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append("%s (Kubernetes %s): %s: %s" % (what, version, path, e.message))
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append("%s (Kubernetes %s): %s" % (what, version, e.message))
    for p in problems:
        sys.stderr.write(p + "\n")
    json.dump(docs, sys.stdout)
    sys.stdout.write("\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
