"""The docs name only things that exist: config, tool, demo and source paths, `make` targets, the
`--flags` of our command-line tools, and relative links (with their #anchors).

Reads README.md, docs/*.md and configs/README.md as text and the tools' source with `ast`: nothing
is imported or run, so a renamed file, flag or heading fails here, fast and without the stack.
"""

import ast
import glob
import itertools
import os.path as osp
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = ['README.md', 'configs/README.md'] + sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'docs', '*.md'))
)

FENCE = re.compile(r'^```([\w-]*)\n(.*?)^```', re.M | re.S)
INLINE_CODE = re.compile(r'`([^`]+)`')  # a code span may continue on the next line
# A repository path: a top folder of ours, then path characters; braces and globs allowed.
REPO_PATH = re.compile(
    r'(?<![\w./$-])((?:configs|tools|demo|tests|mobileone_dense)/'
    r'[\w./*{},-]*\.(?:py|sh))'
)
UPSTREAM = ("mmseg's", "mmdet's", "mmpretrain's", "mmengine's")
MAKE = re.compile(r'(?:^|[\s`(])make\s+([a-z][\w-]*)')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
SCRIPT = re.compile(r'(?<![\w/$-])((?:tools|demo)/[\w/]+\.py|tools/dist_t\w+\.sh)\b')
# The launch scripts pass their options on to these tools.
WRAPPED = {'tools/dist_train.sh': 'tools/train.py', 'tools/dist_test.sh': 'tools/test.py'}
FLAG = re.compile(r'(?<![\w-])--[A-Za-z][\w-]*')


def read(rel: str) -> str:
    with open(osp.join(ROOT, rel), encoding='utf-8') as f:
        return f.read()


def without_code(text: str) -> str:
    """The prose of a markdown text: fenced blocks and inline code blanked out."""
    text = FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)
    return INLINE_CODE.sub('', text)


def code_parts(text: str) -> Iterator[str]:
    """Every fenced block's body and every inline code span outside the blocks."""
    for m in FENCE.finditer(text):
        yield m.group(2)
    yield from INLINE_CODE.findall(FENCE.sub('', text))


def expand_braces(pattern: str) -> List[str]:
    """Shell brace expansion of ``{a,b}`` and ``{0..4}`` (several groups, no nesting)."""
    m = re.search(r'\{([^{}]*)\}', pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r'(\d+)\.\.(\d+)', body)
    if rng:
        items = [str(i) for i in range(int(rng.group(1)), int(rng.group(2)) + 1)]
    else:
        items = body.split(',')
    return list(
        itertools.chain.from_iterable(
            expand_braces(pattern[: m.start()] + item + pattern[m.end() :]) for item in items
        )
    )


def repo_paths(text: str) -> Set[str]:
    """The repository paths a doc names (not those it attributes to an upstream project)."""
    found = set()
    for code in code_parts(text):
        for line in code.split('\n'):
            for m in REPO_PATH.finditer(line):
                if line[: m.start()].rstrip(' `').endswith(UPSTREAM):
                    continue
                found.add(m.group(1).rstrip('.,'))
    return found


def make_targets() -> Set[str]:
    return set(re.findall(r'^([A-Za-z][\w-]*):', read('Makefile'), re.M))


def commands(text: str) -> Iterator[str]:
    """Shell commands of the bash/shell blocks (continuations joined, comments cut) and inline
    code spans that run one of our tools or launch scripts."""
    for m in FENCE.finditer(text):
        if m.group(1) not in ('bash', 'shell', 'sh'):
            continue
        for line in m.group(2).replace('\\\n', ' ').split('\n'):
            line = re.sub(r'(^|\s)#.*', '', line).strip()
            if line:
                yield line
    for span in INLINE_CODE.findall(FENCE.sub('', text)):
        if re.match(r'(?:python\s+|\.venv/bin/python\s+)?(?:tools|demo)/\S+ ', span):
            yield ' '.join(span.split())


def script_flags(script: str) -> Set[str]:
    """The option strings a tool's argparse parser accepts, read from its source and from the
    functions it imports from mobileone_dense (e.g. engine.launch.add_common_arguments)."""
    tree = ast.parse(read(script))
    trees = [tree]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('mobileone_dense'):
            base = osp.join(ROOT, *node.module.split('.'))
            path = base + '.py' if osp.isfile(base + '.py') else osp.join(base, '__init__.py')
            if not osp.isfile(path):
                continue
            module = ast.parse(read(osp.relpath(path, ROOT)))
            names = {alias.name for alias in node.names}
            trees += [
                f for f in ast.walk(module) if isinstance(f, ast.FunctionDef) and f.name in names
            ]
    flags = set()
    for t in trees:
        for call in ast.walk(t):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == 'add_argument'
            ):
                flags.update(
                    a.value
                    for a in call.args
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and a.value.startswith('--')
                )
    return flags


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip()).lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(rel: str) -> Set[str]:
    seen: Dict[str, int] = {}
    found = set()
    for line in FENCE.sub('', read(rel)).split('\n'):
        m = re.match(r'#{1,6} (.*)', line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f'{base}-{n}')
    return found


def broken_links(rel: str) -> List[Tuple[str, str]]:
    bad = []
    for target in LINK.findall(without_code(read(rel))):
        if re.match(r'[a-z]+:', target):
            continue  # http(s), mailto: not checked here (no network)
        path, _, anchor = target.partition('#')
        dest = osp.normpath(osp.join(osp.dirname(rel), path)) if path else rel
        if not osp.exists(osp.join(ROOT, dest)):
            bad.append((target, f'{dest} does not exist'))
        elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
            bad.append((target, f'no heading with anchor #{anchor} in {dest}'))
    return bad


def test_docs_exist():
    for rel in ['README.md', 'configs/README.md', 'docs/README.md', 'docs/get_started.md']:
        assert osp.isfile(osp.join(ROOT, rel)), rel
    assert len(DOCS) >= 10


@pytest.mark.parametrize('doc', DOCS)
def test_named_paths_exist(doc):
    missing = []
    for pattern in sorted(repo_paths(read(doc))):
        for expanded in expand_braces(pattern):
            if not glob.glob(osp.join(ROOT, expanded)):
                missing.append(pattern if expanded == pattern else f'{pattern} ({expanded})')
    assert not missing, (
        f'{doc} names paths that do not exist in the repository: {missing}; '
        'fix the doc or restore the file'
    )


@pytest.mark.parametrize('doc', DOCS)
def test_make_targets_exist(doc):
    targets = make_targets()
    used = {t for code in code_parts(read(doc)) for t in MAKE.findall(code)}
    assert not used - targets, (
        f'{doc} uses make targets the Makefile does not define: '
        f'{sorted(used - targets)} (defined: {sorted(targets)})'
    )


@pytest.mark.parametrize('doc', DOCS)
def test_tool_flags_exist(doc):
    unknown = []
    for command in commands(read(doc)):
        for m in SCRIPT.finditer(command):
            script = WRAPPED.get(m.group(1), m.group(1))
            if not osp.isfile(osp.join(ROOT, script)):
                continue  # reported by test_named_paths_exist
            rest = SCRIPT.split(command[m.end() :])[0]  # up to the next script on the line
            accepted = script_flags(script)
            unknown += [f'{script} {flag}' for flag in FLAG.findall(rest) if flag not in accepted]
    assert not unknown, (
        f'{doc} shows options our tools do not accept: {unknown}; '
        "fix the doc or the tool's argparse"
    )


@pytest.mark.parametrize('doc', DOCS)
def test_relative_links_resolve(doc):
    bad = broken_links(doc)
    assert not bad, f'{doc} has broken relative links: {bad}'


def test_checks_see_what_they_check():
    """The extractors find what the docs hold (so the tests above cannot pass by finding
    nothing)."""
    readme = read('README.md')
    assert 'configs/ssdlite_mobileone_s0_coco.py' in repo_paths(readme)
    assert expand_braces('configs/ssdlite_mobileone_s{0..1}_{coco,x}.py') == [
        'configs/ssdlite_mobileone_s0_coco.py',
        'configs/ssdlite_mobileone_s0_x.py',
        'configs/ssdlite_mobileone_s1_coco.py',
        'configs/ssdlite_mobileone_s1_x.py',
    ]
    assert {'demo', 'test'} <= {t for c in code_parts(readme) for t in MAKE.findall(c)}
    assert {'--work-dir', '--cfg-options', '--amp', '--resume'} <= script_flags('tools/train.py')
    assert (
        slug('What the tests show (`tests/test_classification.py`)')
        == 'what-the-tests-show-teststest_classificationpy'
    )
    get_started = read('docs/get_started.md')
    assert any('tools/train.py' in c and '--launcher' in c for c in commands(get_started))
    assert LINK.findall(without_code(readme))
