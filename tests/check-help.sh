#!/bin/sh
# check-help.sh VMSHADOW SOURCE_DIR - the options of `vmshadow --help` and
# of each `vmshadow COMMAND --help` are the ones docs/cli.md and the man page
# docs/vmshadow.1 give (issue 24 point 4): a command, a global option or a
# command option added, renamed or removed in one place and not the others
# fails here, naming both sides.
#   global: the option lines of `vmshadow --help` vs the "Global options"
#           table of docs/cli.md vs the OPTIONS section of the man page;
#   per command: the options of its usage and option lines vs its synopsis
#           in docs/cli.md (a "### `cmd ...`" heading or a "- `cmd ...`"
#           item) vs its synopsis line in the man page's COMMANDS section.
bin=${1:?usage: check-help.sh VMSHADOW SOURCE_DIR}
src=${2:?usage: check-help.sh VMSHADOW SOURCE_DIR}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# --help changes nothing and needs no host: keep it off the real state
export VMSHADOW_CONFIG=/dev/null VMSHADOW_STATE_DIR=$tmp/state VMSHADOW_WRITERS_DIR=$tmp/writers
export LIBVIRT_DEFAULT_URI=test:///default
"$bin" --help >"$tmp/global.txt" || { echo "vmshadow --help failed"; exit 1; }
for cmd in $(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' "$tmp/global.txt"); do
    "$bin" "$cmd" --help >"$tmp/cmd-$cmd.txt" 2>"$tmp/cmd-$cmd.err" ||
        { echo "vmshadow $cmd --help failed: $(cat "$tmp/cmd-$cmd.err")"; exit 1; }
done
# not exec: the trap removes $tmp when python3 is done
python3 - "$tmp" "$src/docs/cli.md" "$src/docs/vmshadow.1" <<'PY'
import glob, os, re, sys
tmp, cli_md, man = sys.argv[1:4]
md = open(cli_md).read()
roff = open(man).read().replace('\\-', '-').replace('\\fB', '').replace('\\fR', '').replace('\\fI', '')
bad = []
LONG = re.compile(r'(?<![\w-])--[a-z][a-z-]*')
SHORT = re.compile(r'(?<![\w-])-[a-zA-Z](?![\w-])')

def opts(text):
    return set(LONG.findall(text)) | set(SHORT.findall(text))

def compare(what, sides):
    names = list(sides)
    for a in names[1:]:
        if sides[a] != sides[names[0]]:
            bad.append('%s: %s has %s, %s has %s' % (what, names[0], sorted(sides[names[0]]),
                                                     a, sorted(sides[a])))

# ---- global options
g = open(os.path.join(tmp, 'global.txt')).read()
g_help = set()
for line in g.split('Options:', 1)[1].split('\n\n', 1)[0].splitlines():
    m = re.match(r'\s+((?:-\w|--[\w-]+)(?:, --[\w-]+)?)', line)
    if m:
        g_help |= opts(m.group(1))
sec = md.split('## Global options', 1)[1].split('\n## ', 1)[0]
g_md = set()
for line in sec.splitlines():
    if line.startswith('| `'):
        g_md |= opts(line.split('|')[1])
msec = roff.split('.SH OPTIONS', 1)[1].split('.SH ', 1)[0]
g_man = set()
for i, line in enumerate(msec.splitlines()):
    if i > 0 and msec.splitlines()[i - 1].strip() == '.TP':
        g_man |= opts(line)
compare('global options', {'vmshadow --help': g_help, 'docs/cli.md': g_md,
                           'docs/vmshadow.1': g_man})

# ---- commands
mcmds = roff.split('.SH COMMANDS', 1)[1].split('.SH ', 1)[0].splitlines()
for path in sorted(glob.glob(os.path.join(tmp, 'cmd-*.txt'))):
    cmd = os.path.basename(path)[4:-4]
    h = open(path).read()
    lines = h.splitlines()
    keep = []
    usage = False
    for line in lines:
        if line.startswith('Usage:'):
            usage = True
            keep.append(line)
        elif usage and line.startswith(' ') and not line.strip().startswith('-'):
            keep.append(line)  # the usage goes on
        else:
            usage = False
            if re.match(r'\s+--?\w', line):
                keep.append(line.split('  ', 2)[1] if '  ' in line.strip() else line)
    h_opts = opts(' '.join(keep)) - {'--help', '-h'}
    m = re.search(r'^(?:### |- )`%s(?:[ `][^`]*)?`' % re.escape(cmd), md, re.M)
    if not m:
        bad.append('docs/cli.md has no synopsis of %s ("### `%s ...`" or "- `%s ...`")' % (cmd, cmd, cmd))
        continue
    d_opts = opts(m.group(0))
    syn = None
    for i, line in enumerate(mcmds):
        words = re.split(r'[ ,]+', line.replace('.B ', '', 1))
        if i > 0 and mcmds[i - 1].strip() == '.TP' and cmd in words[:3]:
            syn = line
    if syn is None:
        bad.append('docs/vmshadow.1 has no synopsis line of %s under COMMANDS' % cmd)
        continue
    compare('options of %s' % cmd, {'vmshadow %s --help' % cmd: h_opts, 'docs/cli.md': d_opts,
                                    'docs/vmshadow.1': opts(syn)})
for b in bad:
    print(b)
if bad:
    sys.exit(1)
print('help, docs/cli.md and docs/vmshadow.1 agree')
PY
