"""The house's rules, checked on the source: imports point one way, start-up imports stay light, and only the
catalogue lists the plugin's algorithms."""
import ast
import os
import re

from domainbed_diffusion import catalogue

from conftest import REPO

PACKAGES = ("domainbed_diffusion", "offline_generation")


def modules():
    """``{module name: path}`` of every module of the two packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].replace(os.sep, ".")
                    out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return out


def imports(name, path, known, top_level_only=False):
    """The package modules that ``name`` imports, at module level or (unless ``top_level_only``) anywhere."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{a.name}" for a in node.names]
            if not any(t in known for t in targets):  # names from a module, not modules of a package
                targets = [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


P = "domainbed_diffusion"
# constants and small helpers with no import of the package's logic: anything may read them
NAMES = {f"{P}.benchmark", f"{P}.benchmark.shipped", f"{P}.data.seeding", f"{P}.data.files"}
# the wings, bottom to top: a module imports from its own layer or below, never above
LAYERS = [
    [f"{P}.data"],  # the on-disk layer: synthetic layout, index, splits, filter, the leak rule
    [f"{P}.benchmark"],  # DigitStyles, its dataset class, its pretrained featurizer
    [f"{P}.diffusion", f"{P}.methods"],  # the Stable Diffusion code path; each method's math
    [f"{P}.generation", f"{P}.hparams_registry"],  # the generation methods' runners and specs
    [f"{P}.catalogue"],
    [f"{P}.training", f"{P}.launchers", f"{P}.results"],  # what a DomainBed run does beyond stock; sweeps; tables
    [P],  # DomainBed's side: algorithms, registration, start-up
]


def layer(module):
    """A module's layer: -1 for the names, else its longest matching prefix's."""
    if module in NAMES:
        return -1
    matches = [(len(prefix), k) for k, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def test_the_wings_import_downwards_only():
    known = {n: p for n, p in modules().items() if n.startswith(P)}
    upward = [f"{n} (layer {layer(n)}) imports {t} (layer {layer(t)})" for n, path in sorted(known.items())
              for t in sorted(imports(n, path, known)) if layer(t) > layer(n)]
    assert not upward, upward
    for name in NAMES:  # the names import nothing of the package
        assert not imports(name, known[name], known), name


def test_no_import_cycle_inside_the_packages():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    # a package's __init__ importing its own submodules is not a cycle through them
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in graph)}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_start_up_and_registry_imports_are_light():
    known = modules()
    # interpreter start-up imports these in every process: standard library only at module level
    for name in ("domainbed_diffusion", "domainbed_diffusion._autoload", "domainbed_diffusion.registration"):
        allowed = {"domainbed_diffusion.registration"} if name.endswith("_autoload") else set()
        assert imports(name, known[name], known, top_level_only=True) <= allowed, name
    registry = imports("domainbed_diffusion.hparams_registry", known["domainbed_diffusion.hparams_registry"], known)
    assert registry <= NAMES, registry
    # the generator builds on the plugin, never the other way round
    assert not any(t.startswith("offline_generation")
                   for n, p in known.items() if n.startswith("domainbed_diffusion") for t in imports(n, p, known))


def test_only_the_catalogue_spells_the_list_of_algorithms():
    names = catalogue.algorithms()
    pattern = re.compile(r"\[[^\[\]]*\]|\([^()]*\)", re.S)
    offenders = []
    for folder in ("domainbed_diffusion", "offline_generation", "sweeps", "tests"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                # the pre-registered study fixes its rows in its protocol: they must not follow the catalogue
                if not name.endswith(".py") or name == "catalogue.py" or (folder, name) == ("sweeps", "study.py"):
                    continue
                text = open(os.path.join(root, name), encoding="utf-8").read()
                for literal in pattern.findall(text):  # a list or tuple literal naming most algorithms
                    if sum(f'"{a}"' in literal for a in names) >= len(names) - 1:
                        offenders.append(os.path.join(folder, name))
    assert not offenders, offenders


def test_the_catalogue_is_data_and_imports_no_algorithm():
    """The catalogue lists; ``registration`` makes classes: no import of the algorithms from the catalogue, not even
    by name (the only modules it names are the generation methods' own)."""
    known = modules()
    path = known["domainbed_diffusion.catalogue"]
    assert "domainbed_diffusion.algorithms" not in imports("domainbed_diffusion.catalogue", path, known)
    tree = ast.parse(open(path, encoding="utf-8").read())
    named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and n.value.startswith("domainbed_diffusion.")]
    named.remove(catalogue.ENTRY_POINT_GROUP)
    assert named and all(m.startswith("domainbed_diffusion.generation.") for m in named), named
    assert not any(isinstance(e.algorithm_class, str) for e in catalogue.entries())  # no "module:Class" strings


def test_one_module_mixes_synthetic_images():
    """Synthetic streams are opened and mixed into minibatches in ``training.mixing`` alone; the methods' algorithms
    and the options of every algorithm call it."""
    mixing = os.path.join(REPO, "domainbed_diffusion", "training", "mixing.py")
    opened, mixed = [], []
    for name, path in modules().items():
        text = open(path, encoding="utf-8").read()
        if path != mixing and re.search(r"InfiniteDataLoader\(|union_slots\(", text):
            opened.append(name)
        if re.search(r"\.mix\(", text):
            mixed.append(name)
    assert not opened, opened
    assert sorted(mixed) == ["domainbed_diffusion.algorithms", "domainbed_diffusion.training.options"]


def test_no_sweep_script_imports_another():
    """The sweep scripts call the pipeline API; none imports another script or puts ``sweeps/`` on the path."""
    folder = os.path.join(REPO, "sweeps")
    scripts = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    offenders = []
    for name in sorted(scripts):
        text = open(os.path.join(folder, name + ".py"), encoding="utf-8").read()
        for node in ast.walk(ast.parse(text)):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{name} imports {t}" for t in targets if t.split(".")[0] in scripts]
        if "sys.path.insert" in text or "sys.path.append" in text:
            offenders.append(f"{name} changes sys.path")
    assert not offenders, offenders
