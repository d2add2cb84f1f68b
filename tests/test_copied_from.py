"""`# Copied from liwi_diffusers.<module>.<object>` blocks must stay identical to their source.

diffusers keeps one model per file by copying small blocks between modules and marks each copy with a
``# Copied from`` comment that ``make fix-copies`` checks. Here the check is a test: the class or function right
under such a comment must equal the named object's source, line for line (after removing the common indentation
and applying the optional ``with Old->New`` renames). Edit the source and the copies together, or drop the comment.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
# "# Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock with _ResidualBlock->_Block, x->y (a note)"
COPIED_FROM = re.compile(
    r"^\s*# Copied from (?P<target>liwi_diffusers(?:\.\w+)+)"
    r"(?:\s+with\s+(?P<renames>[\w.]+->[\w.]+(?:\s*,\s*[\w.]+->[\w.]+)*))?"
)


@dataclass(frozen=True)
class CopiedBlock:
    where: str  # "path:line" of the comment
    target: str  # dotted name of the original
    renames: tuple[tuple[str, str], ...]  # applied to the original before comparing
    code: str  # the copy, dedented


def _definitions(tree: ast.Module) -> list[ast.AST]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]


def _block(lines: list[str], node: ast.AST) -> str:
    """The source of a definition, decorators included, dedented, trailing spaces removed."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    text = "\n".join(line.rstrip() for line in lines[first - 1 : node.end_lineno])
    return textwrap.dedent(text).strip("\n")


def copied_blocks(text: str, name: str = "<text>") -> list[CopiedBlock]:
    """Every ``# Copied from`` comment in a module's text with the definition right under it."""
    lines = text.splitlines()
    starts = {}
    for node in _definitions(ast.parse(text)):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        starts[first] = node
    blocks = []
    for number, line in enumerate(lines, start=1):
        match = COPIED_FROM.match(line)
        if match is None:
            continue
        node = starts.get(number + 1)
        if node is None:
            raise AssertionError(f"{name}:{number}: a '# Copied from' comment must sit right above a class or def")
        renames = tuple(tuple(pair.strip().split("->")) for pair in (match["renames"] or "").split(",") if pair.strip())
        blocks.append(CopiedBlock(f"{name}:{number}", match["target"], renames, _block(lines, node)))
    return blocks


def original_source(target: str) -> str:
    """Source of ``liwi_diffusers.<module>.<object>[.<member>...]``, read from the module's file (not imported)."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 1, -1):  # the longest prefix that is a module file
        module, path = ".".join(parts[:split]), parts[split:]
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a parent is a module, not a package
            spec = None
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            break
    else:
        raise AssertionError(f"'# Copied from {target}': no such module")
    text = Path(spec.origin).read_text(encoding="utf-8")
    scope: list[ast.stmt] = ast.parse(text).body
    node = None
    for name in path:
        node = next(
            (
                n
                for n in scope
                if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
            ),
            None,
        )
        if node is None:
            raise AssertionError(f"'# Copied from {target}': {module} defines no {'.'.join(path)}")
        scope = node.body
    return _block(text.splitlines(), node)


def mismatch(block: CopiedBlock) -> str | None:
    """None when the copy equals its original (after the renames), else a unified diff and what to do."""
    expected = original_source(block.target)
    for old, new in block.renames:
        expected = expected.replace(old, new)
    if block.code == expected:
        return None
    diff = "\n".join(
        difflib.unified_diff(
            expected.splitlines(), block.code.splitlines(), block.target, block.where, lineterm="", n=1
        )
    )
    return f"{block.where} differs from {block.target}; make them equal again or drop the comment:\n{diff}"


def all_copied_blocks() -> list[CopiedBlock]:
    blocks = []
    for path in sorted(SOURCE_ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "# Copied from" in text:
            blocks += copied_blocks(text, str(path.relative_to(SOURCE_ROOT.parent)))
    return blocks


# ---------------------------------------------------------------------------------------------- the check
def test_every_copied_block_matches_its_source():
    blocks = all_copied_blocks()
    # shadow_head.py copies the alpha decoder's residual block (one model per file).
    assert any(block.target == "liwi_diffusers.models.alpha_decoder._ResidualBlock" for block in blocks)
    problems = [problem for problem in map(mismatch, blocks) if problem]
    assert not problems, "\n\n".join(problems)


# ---------------------------------------------------------------------------------------------- the check can fail
SHADOW_HEAD = SOURCE_ROOT / "liwi_diffusers" / "models" / "shadow_head.py"


def test_a_drifted_copy_is_reported_with_a_diff():
    text = SHADOW_HEAD.read_text(encoding="utf-8")
    assert "return hidden + self.conv2" in text
    drifted = text.replace("return hidden + self.conv2", "return hidden - self.conv2")
    (block,) = [b for b in copied_blocks(drifted, "shadow_head.py") if "_ResidualBlock" in b.target]
    problem = mismatch(block)
    assert problem is not None and "shadow_head.py:" in problem
    assert "-        return hidden + self.conv2" in problem and "+        return hidden - self.conv2" in problem


def test_renames_and_members_and_bad_targets():
    original = original_source("liwi_diffusers.models.alpha_decoder._ResidualBlock")
    renamed = original.replace("_ResidualBlock", "_Block")
    text = "# Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock with _ResidualBlock->_Block\n" + renamed
    (block,) = copied_blocks(text)
    assert block.renames == (("_ResidualBlock", "_Block"),) and mismatch(block) is None
    (unrenamed,) = copied_blocks(text.split(" with ")[0] + "\n" + renamed)
    assert mismatch(unrenamed) is not None

    method = original_source("liwi_diffusers.models.alpha_decoder._ResidualBlock.forward")
    indented = "class Other:\n    # Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock.forward\n"
    indented += textwrap.indent(method, "    ") + "\n"
    (member,) = copied_blocks(indented)
    assert mismatch(member) is None

    with pytest.raises(AssertionError, match="defines no"):
        original_source("liwi_diffusers.models.alpha_decoder._NoSuchBlock")
    with pytest.raises(AssertionError, match="no such module"):
        original_source("liwi_diffusers.no_such_module.Thing")
    with pytest.raises(AssertionError, match="right above"):
        copied_blocks("# Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock\n\nx = 1\n")
