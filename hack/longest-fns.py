#!/usr/bin/env python3
"""The longest functions under a directory of Rust code (tests modules
excluded): `hack/longest-fns.py src [N]`. Counts lines from `fn` to its
closing brace; a rough brace matcher that ignores braces in strings and
comments well enough for this codebase."""
import os
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
TESTS = re.compile(r"^\s*mod tests\s*\{")


def braces(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    line = line.split("//")[0]
    return line.count("{") - line.count("}")


def functions(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        if TESTS.match(lines[i]):
            depth = braces(lines[i])
            i += 1
            while i < len(lines) and depth > 0:
                depth += braces(lines[i])
                i += 1
            continue
        m = FN.match(lines[i])
        if m:
            start, depth, seen = i, 0, False
            while i < len(lines):
                depth += braces(lines[i])
                seen = seen or "{" in lines[i]
                if ";" in lines[i] and not seen:
                    break
                if seen and depth <= 0:
                    break
                i += 1
            if seen:
                yield m.group(6), start + 1, i - start + 1
        i += 1


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                found += [(length, f"{os.path.relpath(p, root)}:{line}", name) for name, line, length in functions(p)]
    for length, where, name in sorted(found, reverse=True)[:n]:
        print(f"{length:4} {name} ({where})")


main()
