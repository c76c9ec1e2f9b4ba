"""The layering of docs/architecture.md, checked on the source: the core imports no family, a
family not the other, only the registry and the families name a family or a model kind, and
no import cycle exists (imports inside functions included)."""

import ast
import pathlib
import re

import pytest

from jaxsr import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxsr"
FAMILIES = registry.FAMILIES
ENTRY_POINTS = ("train.py", "evaluate.py")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path, modules) -> set[str]:
  """jaxsr modules `path` imports anywhere in it (a `from P import name` of a submodule counts
  as importing the submodule)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxsr"}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.split(".")[0] != "jaxsr":
        continue
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if submodule in modules else node.module)
  return found


def layer(module: str) -> str:
  parts = module.split(".")
  if len(parts) > 1 and parts[1] in FAMILIES:
    return parts[1]
  if module in ("jaxsr.registry", "jaxsr.cli", "jaxsr"):
    return "registry"  # the registry, the command and the package's lazy API
  return "core"


def test_every_family_is_a_package_with_its_interface():
  for family in FAMILIES:
    for module in ("task", "step", "evaluation", "cli"):  # a module, or a package of modules
      assert ((PACKAGE / family / f"{module}.py").is_file()
              or (PACKAGE / family / module / "__init__.py").is_file()), (family, module)
  for task in registry.TASKS.values():
    module, function = task.evaluate.split(":")
    path = PACKAGE / task.family / f"{module.replace('.', '/')}.py"  # a module or a submodule
    if not path.is_file():
      path = path.with_suffix("") / "__init__.py"
    assert re.search(rf"^def {function}\(|^from .* import .*\b{function}\b", path.read_text(),
                     re.M), task


def test_core_imports_no_family_and_families_not_each_other():
  modules = package_modules()
  wrong = []
  for name, path in modules.items():
    for target in imports(path, modules):
      source_layer, target_layer = layer(name), layer(target)
      if source_layer == "core" and target_layer != "core":
        wrong.append(f"{name} -> {target}")
      if source_layer in FAMILIES and target_layer not in (source_layer, "core"):
        wrong.append(f"{name} -> {target}")
  assert not wrong, wrong


def test_no_import_cycle():
  modules = package_modules()
  graph = {name: imports(path, modules) & set(modules) for name, path in modules.items()}
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def family_words() -> list[str]:
  """Model kinds and family-specific task names that only the registry and families may name."""
  kinds = [kind for family in FAMILIES
           for kind in registry.family_module(family, "step").MODEL_KINDS]
  return kinds + ["mrsi", "dmri"]


@pytest.mark.parametrize("path", [*(ROOT / p for p in ENTRY_POINTS),
                                  *(p for p in sorted(PACKAGE.rglob("*.py"))
                                    if layer(module_name(p)) == "core" or p.name == "cli.py"
                                    and p.parent == PACKAGE)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_registry_and_families_branch_on_the_family(path):
  """No string literal outside docstrings names a model kind or a family."""
  tree = ast.parse(path.read_text())
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and node.body and isinstance(node.body[0], ast.Expr)}
  words = family_words()
  named = [(node.lineno, node.value) for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and isinstance(node.value, str)
           and id(node) not in docstrings
           and any(re.search(rf"(?<![\w.]){w}(?![\w.])", node.value) for w in words)]
  assert not named, named


def test_the_checks_see_a_violation(tmp_path):
  """The import analysis finds a family import and a cycle when there is one."""
  source = tmp_path / "bad.py"
  source.write_text("def f():\n  from jaxsr.dmri import step\nimport jaxsr.mrsi.task\n")
  assert imports(source, package_modules()) == {"jaxsr.dmri.step", "jaxsr.mrsi.task"}
  assert layer("jaxsr.train.loop") == "core" and layer("jaxsr.dmri.step") == "dmri"


def test_every_jaxsr_import_names_a_module_or_a_name_that_exists():
  """Function-level imports run only when called: a moved module must not hide behind one."""
  import importlib

  modules = package_modules()
  wrong = []
  sources = list(modules.values()) + sorted((ROOT / "tests").glob("*.py")) + sorted(
      (ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "configs").glob("*.py"))
  for path in sources:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
          node.module.split(".")[0] == "jaxsr":
        if node.module not in modules:
          wrong.append(f"{path.name}: {node.module}")
          continue
        module = importlib.import_module(node.module)
        wrong += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                  if not hasattr(module, a.name) and f"{node.module}.{a.name}" not in modules]
      elif isinstance(node, ast.Import):
        wrong += [f"{path.name}: {a.name}" for a in node.names
                  if a.name.split(".")[0] == "jaxsr" and a.name not in modules]
  assert not wrong, wrong
