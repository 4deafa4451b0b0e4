#!/usr/bin/env python3
"""Extract Kuma validator test cases (Ginkgo Entry/ErrorCase tables and
MeshOpenTelemetryBackend testdata goldens) into a JSON file for Tern's
parity comparison (crates/model/examples/kuma_parity.rs).

Usage: KUMA_GIT_DIR=<a Kuma git directory> KUMA_REV=v2.14.3 python3 scripts/kuma-parity/cases.py OUT.json
(scripts/kuma-parity.sh runs it, then compares Tern with every case.)
"""
import json
import os
import re
import subprocess
import sys

import yaml

REPO = os.environ["KUMA_GIT_DIR"]
REV = os.environ.get("KUMA_REV", "HEAD")


def git_show(path):
    return subprocess.run(["git", "-C", REPO, "show", f"{REV}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def git_ls(path):
    out = subprocess.run(["git", "-C", REPO, "ls-tree", "--name-only", REV, path + "/"],
                         check=True, capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l]


# --- constants from pkg/core/validators (for fmt.Sprintf(..., validators.X)) ---
CONSTS = {}
for f in git_ls("pkg/core/validators"):
    if f.endswith(".go") and not f.endswith("_test.go"):
        for m in re.finditer(r'^\s*(\w+)\s*(?:string\s*)?=\s*"((?:[^"\\]|\\.)*)"\s*$', git_show(f), re.M):
            CONSTS["validators." + m.group(1)] = json.loads('"' + m.group(2) + '"')


# --- a tiny parser for the Go expression subset used in Entry(...) args ---
class P:
    def __init__(self, s, i):
        self.s, self.i = s, i

    def ws(self):
        while True:
            while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
                self.i += 1
            if self.s.startswith("//", self.i):
                self.i = self.s.index("\n", self.i)
                continue
            return

    def peek(self):
        self.ws()
        return self.s[self.i]

    def expect(self, c):
        self.ws()
        assert self.s[self.i] == c, (c, self.s[self.i:self.i + 80])
        self.i += 1

    def expr(self):
        self.ws()
        c = self.s[self.i]
        if c == "`":
            j = self.s.index("`", self.i + 1)
            v = self.s[self.i + 1:j]
            self.i = j + 1
            return v
        if c == '"':
            m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(self.s, self.i)
            self.i = m.end()
            return json.loads(m.group(0))
        if c == "[":  # []T{...}
            m = re.compile(r"\[\][\w.]+").match(self.s, self.i)
            self.i = m.end()
            return self.composite()
        m = re.compile(r"[\w.]+").match(self.s, self.i)
        assert m, self.s[self.i:self.i + 80]
        name = m.group(0)
        self.i = m.end()
        self.ws()
        if self.i < len(self.s) and self.s[self.i] == "(":
            self.i += 1
            args = self.args(")")
            if name == "fmt.Sprintf":
                return args[0] % tuple(args[1:])
            raise ValueError("unsupported call " + name)
        if self.i < len(self.s) and self.s[self.i] == "{":
            return self.composite()
        if name in CONSTS:
            return CONSTS[name]
        if name in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[name]
        raise ValueError("unknown identifier " + name)

    def composite(self):
        self.expect("{")
        keyed, items = {}, []
        while self.peek() != "}":
            save = self.i
            m = re.compile(r"\s*(\w+)\s*:(?!=)").match(self.s, self.i)
            if m:
                self.i = m.end()
                keyed[m.group(1)] = self.expr()
            else:
                self.i = save
                items.append(self.expr())
            if self.peek() == ",":
                self.i += 1
        self.expect("}")
        return keyed if keyed else items

    def args(self, close):
        out = []
        while self.peek() != close:
            out.append(self.expr())
            if self.peek() == ",":
                self.i += 1
        self.i += 1
        return out


def table_kinds(src):
    """[(pos, 'valid'|'error')] for each table opener in the file."""
    out = []
    for m in re.finditer(r"DescribeTable\(\s*\"([^\"]*)\"|DescribeValidCases\(|DescribeErrorCases\(", src):
        t = m.group(0)
        if t.startswith("DescribeValidCases"):
            out.append((m.start(), "valid"))
        elif t.startswith("DescribeErrorCases"):
            out.append((m.start(), "error"))
        else:
            out.append((m.start(), "valid" if "should pass" in m.group(1) else "error"))
    return out


TOP_LEVEL_META = re.compile(r"^(type|mesh|name):.*$")


def strip_meta(y):
    # MeshMetric cases are whole resources (type/mesh/name + spec fields at top);
    # Kuma decodes them straight into the spec, so drop the three meta keys.
    return "\n".join(l for l in y.split("\n") if not TOP_LEVEL_META.match(l))


def violations_of(expected_yaml):
    doc = yaml.safe_load(expected_yaml) or {}
    return [[v["field"], v["message"]] for v in (doc.get("violations") or [])]


def go_cases(kind, path):
    src = git_show(path)
    tables = table_kinds(src)
    cases = []
    for m in re.finditer(r"\b(Entry|ErrorCases?|FErrorCase)\(", src):
        # skip Entry/ErrorCase definitions in helpers (none in these files) and
        # the method name inside TableEntry strings
        table = [k for pos, k in tables if pos < m.start()][-1]
        p = P(src, m.end())
        args = p.args(")")
        name = args[0]
        fn = m.group(1)
        if fn == "Entry" and table == "valid":
            spec, expected, order = args[1], [], "exact"
        elif fn == "Entry":
            tc = args[1]
            spec, expected, order = tc["inputYaml"], violations_of(tc["expected"]), "exact"
        elif fn in ("ErrorCase", "FErrorCase"):
            v = args[1]
            spec, expected, order = args[2], [[v["Field"], v["Message"]]], "set"
        else:  # ErrorCases
            spec, expected, order = args[2], [[v["Field"], v["Message"]] for v in args[1]], "set"
        if "type:" in spec and kind == "MeshMetric":
            spec = strip_meta(spec)
        cases.append({"kind": kind, "name": name, "table": table, "source": path,
                      "kuma_compare": order, "spec": spec.strip("\n") + "\n",
                      "expected": expected})
    return cases


def motb_cases():
    d = "pkg/core/resources/apis/meshopentelemetrybackend/api/v1alpha1"
    files = set(git_ls(d + "/testdata"))
    # names in the order the Ginkgo table lists them
    test = git_show(d + "/validator_test.go")
    entries = re.findall(r'Entry\("([^"]*)",\s*testCase\{\s*file:\s*"([^"]*)"', test)
    listed = {f for _, f in entries}
    inputs = sorted(f.rsplit("/", 1)[1][:-len(".input.yaml")] for f in files if f.endswith(".input.yaml"))
    cases = []
    for title, base in entries + [(None, b) for b in inputs if b not in listed]:
        inp = f"{d}/testdata/{base}.input.yaml"
        out = f"{d}/testdata/{base}.output.yaml"
        expected = violations_of(git_show(out)) if out in files else []
        cases.append({"kind": "MeshOpenTelemetryBackend", "name": base,
                      "title": title, "table": "error" if expected else "valid",
                      "source": inp, "kuma_compare": "exact",
                      "spec": git_show(inp).strip("\n") + "\n", "expected": expected,
                      "not_in_ginkgo_table": title is None})
    return cases


def main():
    out = sys.argv[1]
    cases = []
    cases += go_cases("MeshTrace", "pkg/plugins/policies/meshtrace/api/v1alpha1/validator_test.go")
    cases += go_cases("MeshAccessLog", "pkg/plugins/policies/meshaccesslog/api/v1alpha1/validator_test.go")
    cases += go_cases("MeshMetric", "pkg/plugins/policies/meshmetric/api/v1alpha1/validator_test.go")
    cases += motb_cases()
    with open(out, "w") as f:
        json.dump(cases, f, indent=1)
    from collections import Counter
    print(f"wrote {len(cases)} cases to {out}:",
          dict(Counter((c["kind"], c["table"]) for c in cases)))


if __name__ == "__main__":
    main()
