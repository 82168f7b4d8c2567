#!/usr/bin/env python3
"""House numbers of a checkout: the longest functions per crate and the size of the three forwards.

    python3 benches/house.py [ROOT] [--top 3]        # prints one JSON line

A function is `fn NAME` up to its matching closing brace (strings, chars and comments skipped); its length is the
count of lines from the `fn` line to the brace, as STYLE.md's 80-line trigger counts them. Test modules count too
(a crate's `tests.rs` files are its own). The forwards are `engine/src/model.rs`, `engine/src/autograd.rs` (with
`engine/src/autograd/*.rs` but its tests) and the GPU forward (`engine/src/cuda.rs`, since issue 18
`engine/src/device.rs`): lines that are not blank and not only a comment.
"""
import json
import os
import re
import sys

FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def strip(src):
    """The source with string, char and comment contents blanked (newlines kept), so braces can be matched."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not src[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', src[i:]).group(1)
            end = '"' + hashes
            j = src.find(end, i + len(hashes) + 2)
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", src[i:j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", src[i:i + 4]) or src.startswith("'\\u{", i):
            j = src.find("'", i + 2) + 1
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    src = strip(open(path, encoding="utf-8").read())
    found = []
    for m in FN.finditer(src):
        # The body starts at the first `{` after the signature unless a `;` (a declaration) comes first.
        brace, semi = src.find("{", m.end()), src.find(";", m.end())
        if brace < 0 or (0 <= semi < brace):
            continue
        depth, j = 0, brace
        while j < len(src):
            if src[j] == "{":
                depth += 1
            elif src[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        start = src.count("\n", 0, m.start()) + 1
        end = src.count("\n", 0, j) + 1
        found.append((end - start + 1, m.group(1), start))
    return found


def code_lines(path):
    n = 0
    for line in open(path, encoding="utf-8"):
        s = line.strip()
        if s and not s.startswith("//"):
            n += 1
    return n


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 3
    root = args[0] if args and args[0] != str(top) else "."
    crates = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", ".venv", "node_modules")]
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            crate = rel.split(os.sep)[0] if os.sep in rel else "."
            if crate in ("src", "tests", "benches", "examples"):
                crate = "orchard (binary, tests, benches)"
            for length, name, line in functions(path):
                crates.setdefault(crate, []).append((length, f"{rel}:{line} {name}"))
    longest = {c: [f"{n} {w}" for n, w in sorted(fs, reverse=True)[:top]] for c, fs in sorted(crates.items())}
    over = {c: sum(1 for n, _ in fs if n > 80) for c, fs in sorted(crates.items())}
    forwards = {}
    for name, paths in {
        "model.rs": ["engine/src/model.rs"],
        "autograd": ["engine/src/autograd.rs"]
        + sorted(
            os.path.join("engine/src/autograd", f)
            for f in os.listdir(os.path.join(root, "engine/src/autograd"))
            if f.endswith(".rs") and "test" not in f
        )
        if os.path.isdir(os.path.join(root, "engine/src/autograd"))
        else ["engine/src/autograd.rs"],
        # The GPU forward: the left-padded cuda.rs until issue 18, the paged device.rs (any candle device) since.
        "cuda.rs": ["engine/src/cuda.rs", "engine/src/device.rs"],
    }.items():
        forwards[name] = sum(code_lines(os.path.join(root, p)) for p in paths if os.path.exists(os.path.join(root, p)))
    print(json.dumps({"root": root, "forwards_code_lines": forwards, "functions_over_80_lines": over,
                      "longest_functions": longest}))


if __name__ == "__main__":
    main()
