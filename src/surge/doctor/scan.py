"""The walk behind ``surge doctor``: a training script's syntax tree, read in source order.

Each scope (the module, each function) keeps an environment: the names the walk is sure
of (see doctor/values.py). Branches are walked separately and keep only what both agree
on; a loop's bindings count inside it. Functions are walked after the code around them,
seeing its final names (a script's ``main()`` runs after the module's imports). What the
walk meets is recorded as facts (``Facts``); doctor/check.py turns facts into findings.
Nothing is executed and nothing is imported.

[Note: the doctor reports only what it is sure of]
A finding is a claim about the script, so every doubt counts as "unknown", never as a
guess: a name bound differently on two branches, an argument of a function, a global that
changed after a function was defined, ``Accelerator(**kwargs)``, a setting the launch
config could supply when no ``--config`` was given. Rules that need an Accelerator count
only in the scopes that have one in reach (a plain-torch reference in the same file may do
as it likes). tests/unit/test_doctor.py runs every rule over examples/ and the docs' code
and requires silence.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from surge.doctor.names import Env, Names, is_model_class, source_text, tail
from surge.doctor.values import (
    ACCELERATOR,
    ACCELERATOR_NAMES,
    BATCH,
    DEVICE,
    MODEL,
    MODULE_BASES,
    OUTPUT,
    RANK,
    RAW_LOADER,
    RAW_OPTIMIZER,
    STATE_DICT,
    AcceleratorInfo,
    Bound,
    Several,
    Value,
    keyword,
    literal,
)

# Accelerator methods every process must call (collectives, or gathers under sharding).
COLLECTIVE_METHODS = frozenset({"save_state", "load_state", "save_model", "get_state_dict", "wait_for_everyone",
                                "gather", "gather_for_metrics", "reduce", "pad_across_processes"})
TORCH_COLLECTIVES = frozenset({"barrier", "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
                               "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
                               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter",
                               "gather_object", "scatter_object_list", "monitored_barrier"})
RANK_GUARDS = frozenset({"is_main_process", "is_local_main_process", "is_last_process"})
RANK_INDEXES = frozenset({"process_index", "local_process_index"})
_INDEXED_DEVICE = re.compile(r"^(cuda|xpu|npu|hpu):\d+$")


@dataclass
class Facts:
    """What the walk met, for doctor/check.py."""

    found: list[tuple[int, str, str]] = field(default_factory=list)  # (line, rule id, message) found during the walk
    accelerators: list[AcceleratorInfo] = field(default_factory=list)
    prepared_model: bool = False  # some prepare() returned a model
    prepared_keys: set[int] = field(default_factory=set)  # raw objects passed to prepare
    raw_optimizers: list[Value] = field(default_factory=list)
    stepped: set[int] = field(default_factory=set)  # raw optimizers whose step() was called
    raw_loaders: list[Value] = field(default_factory=list)
    trained_on: set[int] = field(default_factory=set)  # raw loaders iterated by a loop that calls backward()
    tensor_backward: list[int] = field(default_factory=list)  # lines of x.backward()
    accelerator_backward: list[tuple[AcceleratorInfo, int]] = field(default_factory=list)  # accelerator.backward()
    accumulates: bool = False  # x.accumulate(...) / x.no_sync(...) called somewhere
    rank_reads: list[tuple[int, str]] = field(default_factory=list)  # (line, what) for hard-coded-rank
    cuda_lines: list[int] = field(default_factory=list)  # where the script targets CUDA explicitly
    pretrained: list[tuple[int, str | None]] = field(default_factory=list)  # model from_pretrained(<literal or None>)
    saves_state: bool = False
    loads_state: bool = False


class Scanner(Names):
    def __init__(self, tree: ast.Module) -> None:
        super().__init__(tree)
        self.tree = tree
        self.facts = Facts()
        self.functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        # functions to walk after their scope: (def, the scope's names (live), its names at the def)
        self._pending: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, Env, Env]] = []
        # Collectives met under rank checks, innermost check last: (line, collective, message).
        self._guarded: list[list[tuple[int, str, str]]] = []
        self._scope = id(tree)  # the function (or module) being walked
        self._accelerated: set[int] = set()  # scopes where an Accelerator is in reach
        self._backward: list[tuple[int, int]] = []  # (scope, line)
        self._rank_reads: list[tuple[int, int, str]] = []
        self._optimizers: list[tuple[int, Value]] = []
        self._loaders: list[tuple[int, Value]] = []

    # ---- scopes -------------------------------------------------------------------------
    def run(self) -> Facts:
        self.block(self.tree.body, {})
        while self._pending:
            node, outer, at_def = self._pending.pop(0)
            local = _local_names(node)
            # A global is read when the function is called: after the scope ran (its final value)
            # unless that value changed after the def (a call may come in between; not sure, unknown).
            env = {name: value for name, value in outer.items()
                   if name not in local and at_def.get(name, value) == value}
            env.update(self._annotated_accelerators(node))
            guarded = any(self._is_main_only_decorator(d, outer) for d in node.decorator_list)
            self._scope = id(node)
            if any(value.kind == ACCELERATOR for value in env.values()):
                self._accelerated.add(self._scope)
            if guarded:
                self._guarded.append([])
            self.block(node.body, env)
            if guarded:
                hits = self._guarded.pop()
                self._report_guarded(hits, [], hits, [])
        # Mistakes that need an Accelerator count only in scopes that have one (a plain-torch
        # helper in the same file may call loss.backward() or read RANK as it likes).
        facts, kept = self.facts, self._accelerated
        facts.tensor_backward = [line for scope, line in self._backward if scope in kept]
        facts.rank_reads = [(line, what) for scope, line, what in self._rank_reads if scope in kept]
        facts.raw_optimizers = [value for scope, value in self._optimizers if scope in kept]
        facts.raw_loaders = [value for scope, value in self._loaders if scope in kept]
        return facts

    def _annotated_accelerators(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> Env:
        """Parameters annotated ``Accelerator``: an Accelerator whose arguments are unknown."""
        unknown = AcceleratorInfo(line=function.lineno, device_placement=None, accumulation=None,
                                  mixed_precision=False, sharding_plugin=False, zero_stage=None, opaque=True)
        found: Env = {}
        for arg in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs):
            annotation = arg.annotation
            if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                try:
                    annotation = ast.parse(annotation.value, mode="eval").body
                except SyntaxError:
                    continue
            if annotation is not None and self.qualname(annotation) in ACCELERATOR_NAMES:
                found[arg.arg] = Value(ACCELERATOR, accelerator=unknown)
        return found

    def block(self, body: list[ast.stmt], env: Env) -> None:
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.If) and not stmt.orelse and stmt.body and \
                    isinstance(stmt.body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break)) and \
                    self.is_rank_guard(stmt.test, env):
                # `if not accelerator.is_main_process: return`: the rest of the block is the other side
                self.expr(stmt.test, env)
                self._rank_split(stmt.body, body[i + 1:], dict(env), env)
                return
            self.stmt(stmt, env)

    def _rank_split(self, then: list[ast.stmt], other: list[ast.stmt], then_env: Env, other_env: Env) -> None:
        """Walk the two sides of a rank check; report a collective only one side makes."""
        self._guarded.append([])
        self.block(then, then_env)
        then_hits = self._guarded.pop()
        self._guarded.append([])
        self.block(other, other_env)
        other_hits = self._guarded.pop()
        # a side that runs this file's own functions may make the matching call inside them
        self._report_guarded([] if self._runs_local(other) else then_hits,
                             [] if self._runs_local(then) else other_hits, then_hits, other_hits)

    def stmt(self, node: ast.stmt, env: Env) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.imports[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    self.imports[top] = top
        elif isinstance(node, ast.ImportFrom):
            if node.module and not node.level:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                self.expr(decorator, env)
            self._pending.append((node, env, dict(env)))  # walked after this scope
            env.pop(node.name, None)
        elif isinstance(node, ast.ClassDef):
            if any(self.qualname(base) in MODULE_BASES or tail(base) in ("Module", "PreTrainedModel")
                   or (isinstance(base, ast.Name) and base.id in self.modules) for base in node.bases):
                self.modules.add(node.name)
            self.block(node.body, dict(env))
            env.pop(node.name, None)
        elif isinstance(node, ast.Assign):
            self.expr(node.value, env)
            value = self.value(node.value, env)
            for target in node.targets:
                self.bind(target, value, env)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value, env)
                self.bind(node.target, self.value(node.value, env), env)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, env)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, env)
            self._note_training_loop(node, env)
            before = dict(env)
            self.bind(node.target, self.element(node.iter, env), env)
            self.block(node.body, env)
            self.block(node.orelse, env)
            _keep_agreed(env, before)
        elif isinstance(node, ast.While):
            self.expr(node.test, env)
            before = dict(env)
            self.block(node.body, env)
            self.block(node.orelse, env)
            _keep_agreed(env, before)
        elif isinstance(node, ast.If) and _is_main_guard(node.test):
            self.block(node.body, env)  # a script runs as __main__: its body is the script's own code
            self.block(node.orelse, dict(env))
        elif isinstance(node, ast.If):
            self.expr(node.test, env)
            then, other = dict(env), dict(env)
            if self.is_rank_guard(node.test, env):
                self._rank_split(node.body, node.orelse, then, other)
            else:
                self.block(node.body, then)
                self.block(node.orelse, other)
            env.clear()
            env.update({k: v for k, v in then.items() if other.get(k) == v})
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, env)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, None, env)
            self.block(node.body, env)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.block(getattr(node, "body", []), env)
            for handler in getattr(node, "handlers", []):
                if handler.name:
                    env.pop(handler.name, None)
                self.block(handler.body, env)
            self.block(getattr(node, "orelse", []), env)
            self.block(getattr(node, "finalbody", []), env)
        elif isinstance(node, ast.Match):
            self.expr(node.subject, env)
            before = dict(env)
            for case in node.cases:
                for name in _stored_names(case.pattern):
                    env.pop(name, None)
                self.block(case.body, env)
            _keep_agreed(env, before)
        else:  # Expr, Return, Raise, Assert, Delete, Global, ...
            if isinstance(node, ast.Delete):
                for target in node.targets:
                    self.bind(target, None, env)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, env)

    def bind(self, target: ast.expr, value: Bound, env: Env) -> None:
        if isinstance(target, ast.Name):
            if isinstance(value, Value):
                env[target.id] = value
            else:
                env.pop(target.id, None)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elements = target.elts
            starred = any(isinstance(e, ast.Starred) for e in elements)
            for i, element in enumerate(elements):
                item: Bound = None
                if isinstance(value, Several) and not starred and len(value.items) == len(elements):
                    item = value.items[i]
                elif isinstance(value, Value) and value.kind == BATCH and not isinstance(element, ast.Starred):
                    item = value
                self.bind(element.value if isinstance(element, ast.Starred) else element,
                          None if isinstance(element, ast.Starred) else item, env)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, None, env)

    # ---- what the walk meets ----------------------------------------------------------------
    def expr(self, node: ast.expr, env: Env) -> None:
        """Record what ``node`` does (its calls, reads), in evaluation order roughly."""
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = dict(env)
            for generator in node.generators:
                self.expr(generator.iter, inner)
                self.bind(generator.target, self.element(generator.iter, inner), inner)
                for condition in generator.ifs:
                    self.expr(condition, inner)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for part in parts:
                self.expr(part, inner)
            return
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, ast.NamedExpr):
            self.expr(node.value, env)
            self.bind(node.target, self.value(node.value, env), env)
            return
        if isinstance(node, ast.Call):
            self.call(node, env)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            self.note_rank_read(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expr(child, env)
            elif isinstance(child, ast.keyword):
                self.expr(child.value, env)

    def call(self, call: ast.Call, env: Env) -> None:
        facts = self.facts
        name = self.qualname(call.func)
        self.note_rank_read(call)
        if name in ACCELERATOR_NAMES:
            info = self.accelerator_info(call, env)
            if info not in facts.accelerators:
                facts.accelerators.append(info)
            self._accelerated.add(self._scope)
        made = self.call_value(call, env)
        if isinstance(made, Value) and made.kind == RAW_OPTIMIZER and (self._scope, made) not in self._optimizers:
            self._optimizers.append((self._scope, made))
        if name == "torch.device":
            self.note_device(call, call.args[0] if call.args else keyword(call, "type"), call.args[1:2])
        if name is not None and name.startswith("torch.distributed.") and name.rsplit(".", 1)[1] in TORCH_COLLECTIVES:
            self._collective(call, name)
        if name in ("torch.save", "safetensors.torch.save_file", "safetensors.torch.save_model") and call.args:
            self.note_save(call, call.args[0], env)
        if isinstance(call.func, ast.Attribute):
            self.method_call(call, call.func.attr, call.func.value, env)
        kw_device = keyword(call, "device")
        if kw_device is not None:
            self.note_device(call, kw_device, [])

    def method_call(self, call: ast.Call, method: str, receiver_node: ast.expr, env: Env) -> None:
        facts = self.facts
        receiver = self.value(receiver_node, env)
        kind = receiver.kind if isinstance(receiver, Value) else None
        if kind == ACCELERATOR:
            assert isinstance(receiver, Value)
            self.accelerator_method(call, method, receiver, env)
            return
        if method in ("accumulate", "no_sync"):
            self.facts.accumulates = True  # on whatever object: manual accumulation may be going on
        if method == "backward" and not call.args and kind == OUTPUT:
            self._backward.append((self._scope, call.lineno))
        if method in ("to", "cuda"):
            target = call.args[0] if call.args else keyword(call, "device")
            device = method == "cuda" or (target is not None and self.is_device(target, env))
            if method == "to" and target is not None:
                self.note_device(call, target, [])
            if method == "cuda":
                facts.cuda_lines.append(call.lineno)
                index = literal(call.args[0]) if call.args else ...
                if isinstance(index, int) and not isinstance(index, bool):
                    self._rank_reads.append((self._scope, call.lineno, f".cuda({index}) names a device by index"))
            if device and isinstance(receiver, Value) and receiver.placed and kind in (MODEL, BATCH):
                what = "the prepared model" if kind == MODEL else "a batch from a prepared DataLoader"
                facts.found.append((call.lineno, "manual-device-placement",
                                    (f"{source_text(call)} moves {what}, which the accelerator already puts on "
                                    "its device")))
        if method == "save_pretrained" and kind == MODEL:
            facts.found.append((call.lineno, "save-wrapped-model",
                                f"{source_text(call)} saves the prepared (wrapped) model"))
        if method == "step" and kind == RAW_OPTIMIZER:
            assert isinstance(receiver, Value)
            facts.stepped.add(receiver.key)
        if method == "from_pretrained" and is_model_class(receiver_node):
            first = literal(call.args[0]) if call.args else literal(keyword(call, "pretrained_model_name_or_path"))
            facts.pretrained.append((call.lineno, first if isinstance(first, str) else None))

    def accelerator_method(self, call: ast.Call, method: str, accelerator: Value, env: Env) -> None:
        facts = self.facts
        if method in COLLECTIVE_METHODS:
            self._collective(call, f"accelerator.{method}")
        if method == "backward":
            assert accelerator.accelerator is not None
            facts.accelerator_backward.append((accelerator.accelerator, call.lineno))
        elif method in ("accumulate", "no_sync"):
            facts.accumulates = True
        elif method == "save_state":
            facts.saves_state = True
        elif method == "load_state":
            facts.loads_state = True
        elif method == "save" and call.args:
            self.note_save(call, call.args[0], env)
        elif method.startswith("prepare"):
            for arg in call.args:
                value = self.value(arg, env)
                if isinstance(value, Value) and value.key:
                    facts.prepared_keys.add(value.key)
                prepared = self.prepared(arg, False, env) if method == "prepare" else None
                if method == "prepare_model" or (prepared is not None and prepared.kind == MODEL):
                    facts.prepared_model = True

    # ---- small judgements -------------------------------------------------------------------
    def note_save(self, call: ast.Call, saved: ast.expr, env: Env) -> None:
        value = self.value(saved, env)
        if isinstance(value, Value) and value.kind in (STATE_DICT, MODEL):
            what = "the prepared model's state_dict()" if value.kind == STATE_DICT else "the prepared model"
            self.facts.found.append((call.lineno, "save-wrapped-model",
                                     f"{source_text(call.func)}({source_text(saved)}, ...) saves {what}"))

    def note_device(self, call: ast.Call, device: ast.expr | None, index: list[ast.expr]) -> None:
        text = literal(device)
        if not isinstance(text, str):
            return
        if text.startswith("cuda"):
            self.facts.cuda_lines.append(call.lineno)
        number = literal(index[0]) if index else ...
        if _INDEXED_DEVICE.match(text) or (text in ("cuda", "xpu", "npu", "hpu") and isinstance(number, int)):
            shown = text if _INDEXED_DEVICE.match(text) else f"{text}, {number}"
            self._rank_reads.append((self._scope, call.lineno, f"device \"{shown}\" is hard-coded"))

    def is_device(self, node: ast.expr, env: Env) -> bool:
        value = self.value(node, env)
        if isinstance(value, Value) and value.kind in (DEVICE, RANK):
            return True
        number = literal(node)
        return isinstance(number, int) and not isinstance(number, bool)

    def note_rank_read(self, node: ast.expr) -> None:
        what = self._rank_read(node)
        if what is not None:
            self._rank_reads.append((self._scope, node.lineno, f"{what} reads the rank or world size directly"))

    def _collective(self, call: ast.Call, name: str) -> None:
        if self._guarded:
            self._guarded[-1].append((call.lineno, name, (f"{source_text(call.func)}() under a rank check: every "
                                                         "process must call it")))

    def _report_guarded(self, then: list[tuple[int, str, str]], other: list[tuple[int, str, str]],
                        all_then: list[tuple[int, str, str]], all_other: list[tuple[int, str, str]]) -> None:
        """A collective that only one side of a rank check calls (both sides calling it is the
        broadcast pattern: rank 0 sends, the others receive)."""
        then_names, other_names = {hit[1] for hit in all_then}, {hit[1] for hit in all_other}
        for line, name, message in then:
            if name not in other_names:
                self.facts.found.append((line, "collective-on-main-process", message))
        for line, name, message in other:
            if name not in then_names:
                self.facts.found.append((line, "collective-on-main-process", message))

    def _runs_local(self, body: list[ast.stmt]) -> bool:
        return any(isinstance(n, ast.Name) and n.id in self.functions for stmt in body for n in ast.walk(stmt))

    def is_rank_guard(self, test: ast.expr, env: Env) -> bool:
        """Only some processes pass ``test`` (``accelerator.is_main_process``, ``rank == 0``, and ``and``s of it)."""
        if isinstance(test, ast.Attribute):
            return test.attr in RANK_GUARDS
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return self.is_rank_guard(test.operand, env)
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return any(self.is_rank_guard(v, env) for v in test.values)
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
            left, right = test.left, test.comparators[0]
            if isinstance(literal(left), int):
                left, right = right, left
            if not isinstance(literal(right), int):
                return False
            if isinstance(left, ast.Attribute) and left.attr in RANK_INDEXES:
                return True
            value = self.value(left, env)
            return isinstance(value, Value) and value.kind == RANK
        return False

    def _is_main_only_decorator(self, decorator: ast.expr, env: Env) -> bool:
        return isinstance(decorator, ast.Attribute) and decorator.attr in ("on_main_process",
                                                                           "on_local_main_process")

    def _note_training_loop(self, loop: ast.For | ast.AsyncFor, env: Env) -> None:
        """A loop over an unprepared DataLoader whose body calls backward()."""
        iterable = loop.iter
        while isinstance(iterable, ast.Call) and iterable.args and (
                isinstance(iterable.func, ast.Name) and iterable.func.id in ("enumerate", "tqdm")):
            iterable = iterable.args[0]
        value = self.value(iterable, env)
        if not (isinstance(value, Value) and value.kind == RAW_LOADER):
            return
        models = {name for name, bound in env.items() if bound.kind == MODEL}
        calls = [n for stmt in loop.body for n in ast.walk(stmt) if isinstance(n, ast.Call)]
        # the prepared model is trained on its batches: it is called, and something calls backward
        if any(isinstance(n.func, ast.Attribute) and n.func.attr == "backward" for n in calls) and \
                any(isinstance(n.func, ast.Name) and n.func.id in models for n in calls):
            self.facts.trained_on.add(value.key)
        if (self._scope, value) not in self._loaders:
            self._loaders.append((self._scope, value))


def _is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":``"""
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__" and \
        len(test.comparators) == 1 and literal(test.comparators[0]) == "__main__"


def _keep_agreed(env: Env, before: Env) -> None:
    """After a loop (which may not run): keep only what holds either way."""
    agreed = {k: v for k, v in env.items() if before.get(k) == v}
    env.clear()
    env.update(agreed)


def _local_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = {a.arg for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs)}
    names.update(a.arg for a in (function.args.vararg, function.args.kwarg) if a is not None)
    declared: set[str] = set()
    for node in ast.walk(function):
        if node is function:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    return names - declared


def _stored_names(pattern: ast.pattern) -> set[str]:
    return {n for node in ast.walk(pattern) for n in [getattr(node, "name", None)] if isinstance(n, str)}
