#!/usr/bin/python3
"""Scans the memcheck logs of scripts/valgrind-authproxy.sh (one file per process) and fails
if authproxy's own code leaked or misused memory.

  scripts/valgrind-scan.py LOGDIR [SRCDIR]

Fails (exit 1), printing each distinct stack once with how often and where it was seen, on:
  * a "definitely lost" or "indirectly lost" block whose allocation stack has a frame in src/;
  * any other memcheck error (invalid read/write/free, uninitialised use, overlap, ...) with a
    frame in src/ anywhere in its report (access, allocation or free stack);
  * a process that died of a crash signal (SEGV, BUS, ABRT, ILL, FPE).
Reports without failing: leaks and errors with no src/ frame (third-party: candidates for
scripts/valgrind.supp once shown not to be ours), processes whose log has no ERROR SUMMARY
(killed before exit, so never leak-checked), and syscalls valgrind does not implement.
"""
import collections
import glob
import os
import re
import sys

PREFIX = re.compile(r"^==(\d+)== ?(.*)$")
FRAME = re.compile(r"^\s+(?:at|by) 0x[0-9A-Fa-f]+: (.*)$")
LEAK = re.compile(r"bytes in [\d,]+ blocks are (definitely|indirectly) lost")
CRASH = re.compile(r"Process terminating with default action of signal \d+ \((SIG(?:SEGV|BUS|ABRT|ILL|FPE))\)")
UNHANDLED = re.compile(r"WARNING: unhandled .*syscall: (\d+)|unhandled ioctl (0x[0-9a-f]+)")
LEAK_BYTES = re.compile(r"([\d,]+) (?:\(([\d,]+) direct, [\d,]+ indirect\) )?bytes")
THREAD = re.compile(r"^Thread \d+:$")


def our_frame_pattern(srcdir):
    """A frame is ours when its file is under src/ (full paths: --fullpath-after=) or, for logs
    made without full paths, when its base name is one of src/'s files."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(srcdir, "*.[ch]")))
    alts = [r"(?:[^()]*/)?src/[\w.-]+\.[ch]"] + [re.escape(n) for n in names]
    return re.compile(r"\((?:%s):\d+\)" % "|".join(alts))


def blocks(path):
    """The log's messages: lists of lines (prefix stripped). Each starts with an unindented line;
    its stacks and notes ("   at", " Address ...") are indented."""
    cur = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = PREFIX.match(raw.rstrip("\n"))
            if not m:
                continue
            text = m.group(2)
            if THREAD.match(text):
                continue  # "Thread 4:" heads the next report when the thread changes
            if text.strip() == "" or not text[0].isspace():
                if cur:  # a message ends at an empty line or where an unindented one starts
                    yield cur
                cur = []
            if text.strip() != "":
                cur.append(text)
    if cur:
        yield cur


def signature(block):
    """What makes two reports the same problem: the kind line without numbers, and the frames
    without addresses."""
    head = re.sub(r"0x[0-9A-Fa-f]+|[\d,]+", "N", block[0])
    frames = [m.group(1) for m in (FRAME.match(l) for l in block) if m]
    return head + "\n" + "\n".join(frames)


def command_of(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = PREFIX.match(raw.rstrip("\n"))
            if m and m.group(2).startswith("Command: "):
                return m.group(2)[len("Command: "):]
    return "?"


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    logdir = sys.argv[1]
    srcdir = sys.argv[2] if len(sys.argv) == 3 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    ours_re = our_frame_pattern(srcdir)
    logs = sorted(glob.glob(os.path.join(logdir, "*.log")))
    if not logs:
        print("valgrind-scan: no logs in %s" % logdir)
        return 1

    ours = collections.OrderedDict()    # signature -> [block, count, example log]
    theirs = collections.OrderedDict()
    crashes, unfinished, unhandled = [], [], collections.Counter()
    leak_bytes = collections.Counter()   # "definitely"/"indirectly" -> bytes, src/ leaks only
    for path in logs:
        finished = False
        for b in blocks(path):
            first = b[0]
            for line in b:
                if line.startswith("ERROR SUMMARY:"):
                    finished = True
                m = CRASH.search(line)
                if m:
                    crashes.append((path, m.group(1), command_of(path)))
                m = UNHANDLED.search(line)
                if m:
                    unhandled["syscall %s" % m.group(1) if m.group(1) else "ioctl %s" % m.group(2)] += 1
            if len(b) < 2 or not FRAME.match(b[1]):
                continue  # not an error report (summaries, notes)
            if "Process terminating" in first:
                continue  # the crash's own stack, reported above
            leak = LEAK.search(first)
            mine = any(ours_re.search(l) for l in b if FRAME.match(l))
            table = ours if mine else theirs
            sig = signature(b)
            if sig not in table:
                table[sig] = [b, 0, path]
            table[sig][1] += 1
            if leak and mine:  # "18 (8 direct, 10 indirect) bytes": the 10 have their own record
                m = LEAK_BYTES.match(first)
                leak_bytes[leak.group(1)] += int((m.group(2) or m.group(1)).replace(",", ""))
        if not finished:
            unfinished.append((path, command_of(path)))

    print("valgrind-scan: %d process logs in %s" % (len(logs), logdir))
    for title, table in (("LEAKS/ERRORS IN AUTHPROXY CODE (src/)", ours),
                         ("third-party leaks/errors, no src/ frame (not failing)", theirs)):
        if not table:
            continue
        print("\n== %s: %d distinct, %d in all" % (title, len(table),
                                                     sum(v[1] for v in table.values())))
        for b, count, path in table.values():
            print("\n-- seen %d time(s), e.g. %s (%s)" % (count, os.path.basename(path),
                                                          command_of(path)))
            print("\n".join(b))
    for path, sig, cmd in crashes:
        print("\nCRASH: %s in %s (%s)" % (sig, os.path.basename(path), cmd))
    if unfinished:
        print("\nnote: %d process(es) never reached their leak check (killed, e.g. SIGKILL after "
              "a stop timeout):" % len(unfinished))
        for path, cmd in unfinished:
            print("  %s  %s" % (os.path.basename(path), cmd))
    if unhandled:
        print("\nnote: syscalls/ioctls valgrind does not fully model (per process; may cause "
              "spurious reports): %s"
              % ", ".join("%s x%d" % kv for kv in sorted(unhandled.items())))
    n_leaks = sum(count for b, count, _ in ours.values() if LEAK.search(b[0]))
    n_errs = sum(count for b, count, _ in ours.values() if not LEAK.search(b[0]))
    print("\nvalgrind-scan: authproxy code: %d leak report(s) (%d bytes definitely, %d indirectly "
          "lost), %d memory error report(s); %d crash(es); %d third-party report(s)"
          % (n_leaks, leak_bytes["definitely"], leak_bytes["indirectly"], n_errs, len(crashes),
             sum(v[1] for v in theirs.values())))
    return 1 if ours or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
