"""The walk behind ``surge doctor``: a training script's syntax tree, read in source order.

Each scope (the module, each function) keeps an environment: the names the walk is sure
of (see doctor/values.py). Branches are walked separately and keep only what both agree
on; a loop's bindings count inside it. Functions are walked after the code around them,
seeing its final names (a script's ``main()`` runs after the module's imports). What the
walk meets is recorded as facts (``Facts``); doctor/check.py turns facts into findings.
Nothing is executed and nothing is imported.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from surge.doctor.values import (
    ACCELERATOR,
    ACCELERATOR_NAMES,
    ACCUMULATION_PLUGIN_NAMES,
    BATCH,
    DATALOADER_NAMES,
    DEVICE,
    LOADER,
    MODEL,
    MODULE,
    MODULE_BASES,
    OPTIMIZER,
    PLUGIN,
    PLUGIN_NAMES,
    RANK,
    RAW_LOADER,
    RAW_OPTIMIZER,
    RAW_SCHEDULER,
    SCHEDULER,
    STATE_DICT,
    AcceleratorInfo,
    Bound,
    Several,
    Value,
    keyword,
    literal,
    opaque,
)

Env = dict[str, Value]
# Accelerator methods every process must call (collectives, or gathers under sharding).
COLLECTIVE_METHODS = frozenset({"save_state", "load_state", "save_model", "get_state_dict", "wait_for_everyone",
                                "gather", "gather_for_metrics", "reduce", "pad_across_processes"})
TORCH_COLLECTIVES = frozenset({"barrier", "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
                               "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
                               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter",
                               "gather_object", "scatter_object_list", "monitored_barrier"})
RANK_VARIABLES = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"})
RANK_GUARDS = frozenset({"is_main_process", "is_local_main_process", "is_last_process"})
RANK_INDEXES = frozenset({"process_index", "local_process_index"})
_DEVICE_TEXT = re.compile(r"^(cuda|cpu|mps|xpu|npu|hpu)(:\d+)?$")
_INDEXED_DEVICE = re.compile(r"^(cuda|xpu|npu|hpu):\d+$")


@dataclass
class Facts:
    """What the walk met, for doctor/check.py."""

    found: list[tuple[int, str, str]] = field(default_factory=list)  # (line, rule id, message) found during the walk
    accelerators: list[AcceleratorInfo] = field(default_factory=list)
    prepared_model: bool = False  # some prepare() returned a model
    prepared_keys: set[int] = field(default_factory=set)  # raw objects passed to prepare
    prepared_names: set[str] = field(default_factory=set)  # names passed to prepare as models
    raw_optimizers: list[Value] = field(default_factory=list)
    stepped: set[int] = field(default_factory=set)  # raw optimizers whose step() was called
    raw_loaders: list[Value] = field(default_factory=list)
    trained_on: set[int] = field(default_factory=set)  # raw loaders iterated by a loop that calls backward()
    tensor_backward: list[int] = field(default_factory=list)  # lines of x.backward()
    accelerator_backward: list[int] = field(default_factory=list)  # lines of accelerator.backward(...)
    accumulates: bool = False  # accelerator.accumulate / no_sync used somewhere
    rank_reads: list[tuple[int, str]] = field(default_factory=list)  # (line, what) for hard-coded-rank
    cuda_lines: list[int] = field(default_factory=list)  # where the script targets CUDA explicitly
    pretrained: list[tuple[int, str | None]] = field(default_factory=list)  # model from_pretrained(<literal or None>)
    saves_state: bool = False
    loads_state: bool = False
    checkpointing: bool = False  # gradient_checkpointing_enable() or torch.utils.checkpoint


class Scanner:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.imports: dict[str, str] = {}  # local name -> qualified name
        self.facts = Facts()
        self.modules: set[str] = set()  # classes defined here that are nn.Modules
        self.evidence = _model_evidence(tree)
        self._pending: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, Env]] = []
        self._guard = 0  # > 0: under a rank check
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
            node, outer = self._pending.pop(0)
            local = _local_names(node)
            env = {name: value for name, value in outer.items() if name not in local}
            guarded = any(self._is_main_only_decorator(d, outer) for d in node.decorator_list)
            self._scope = id(node)
            if any(value.kind == ACCELERATOR for value in env.values()):
                self._accelerated.add(self._scope)
            self._guard += guarded
            self.block(node.body, env)
            self._guard -= guarded
        # Mistakes that need an Accelerator count only in scopes that have one (a plain-torch
        # helper in the same file may call loss.backward() or read RANK as it likes).
        facts, kept = self.facts, self._accelerated
        facts.tensor_backward = [line for scope, line in self._backward if scope in kept]
        facts.rank_reads = [(line, what) for scope, line, what in self._rank_reads if scope in kept]
        facts.raw_optimizers = [value for scope, value in self._optimizers if scope in kept]
        facts.raw_loaders = [value for scope, value in self._loaders if scope in kept]
        return facts

    def block(self, body: list[ast.stmt], env: Env) -> None:
        for stmt in body:
            self.stmt(stmt, env)

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
            self._pending.append((node, env))  # walked later, with env as it is then
            env.pop(node.name, None)
        elif isinstance(node, ast.ClassDef):
            if any(self.qualname(base) in MODULE_BASES or _tail(base) in ("Module", "PreTrainedModel")
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
        elif isinstance(node, ast.If):
            self.expr(node.test, env)
            guard = self.is_rank_guard(node.test, env)
            self._guard += guard
            then, other = dict(env), dict(env)
            self.block(node.body, then)
            self.block(node.orelse, other)
            self._guard -= guard
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

    # ---- names ----------------------------------------------------------------------------
    def qualname(self, node: ast.AST) -> str | None:
        """``torch.optim.AdamW`` for ``optim.AdamW`` after ``from torch import optim``."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.imports:
            return None
        return ".".join([self.imports[node.id], *reversed(parts)])

    def accelerator_of(self, node: ast.expr, env: Env) -> Value | None:
        value = self.value(node, env)
        return value if isinstance(value, Value) and value.kind == ACCELERATOR else None

    def accelerator_call(self, call: ast.Call, env: Env) -> tuple[str, Value] | None:
        """``("prepare", acc)`` for ``acc.prepare(...)`` on a known Accelerator."""
        if isinstance(call.func, ast.Attribute):
            accelerator = self.accelerator_of(call.func.value, env)
            if accelerator is not None:
                return call.func.attr, accelerator
        return None

    # ---- values ---------------------------------------------------------------------------
    def value(self, node: ast.expr, env: Env) -> Bound:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DEVICE_TEXT.match(node.value):
            return Value(DEVICE)
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("cuda"):
            return Value(DEVICE)
        if isinstance(node, ast.IfExp):
            body, orelse = self.value(node.body, env), self.value(node.orelse, env)
            return body if body == orelse else None
        if isinstance(node, ast.Tuple):
            return Several(tuple(v if isinstance(v := self.value(e, env), Value) else None for e in node.elts))
        if isinstance(node, (ast.Subscript, ast.Attribute)):
            if self.is_rank_read(node):
                return Value(RANK)
            inner = self.value(node.value, env)
            if isinstance(inner, Value) and inner.kind == BATCH:
                return inner
            if isinstance(node, ast.Subscript) and isinstance(inner, Several):
                index = literal(node.slice)
                if isinstance(index, int) and -len(inner.items) <= index < len(inner.items):
                    return inner.items[index]
            return None
        if isinstance(node, ast.Call):
            return self.call_value(node, env)
        return None

    def call_value(self, call: ast.Call, env: Env) -> Bound:
        name = self.qualname(call.func)
        if name in ACCELERATOR_NAMES:
            return Value(ACCELERATOR, accelerator=self.accelerator_info(call, env))
        if name in PLUGIN_NAMES:
            stage = literal(keyword(call, "zero_stage"))
            return Value(PLUGIN, stage=stage) if isinstance(stage, int) and not opaque(call) else None
        if name in DATALOADER_NAMES:
            return Value(RAW_LOADER, key=id(call), line=call.lineno)
        if name is not None and name.startswith("torch.optim.lr_scheduler."):
            return Value(RAW_SCHEDULER)
        if name is not None and name.startswith("torch.optim.") and name.count(".") == 2 \
                and name.rsplit(".", 1)[1][:1].isupper():
            source = _parameters_of(call.args[0] if call.args else keyword(call, "params"))
            return Value(RAW_OPTIMIZER, key=id(call), line=call.lineno, source=source,
                         source_kind=env[source].kind if source in env else None)
        if name == "torch.device":
            return Value(DEVICE)
        if isinstance(call.func, ast.Name) and call.func.id == "int" and call.args:
            inner = self.value(call.args[0], env)
            return inner if isinstance(inner, Value) and inner.kind == RANK else None
        if self.is_rank_read(call):
            return Value(RANK)
        if name is not None and name.startswith("torch.nn.") and name.rsplit(".", 1)[1][:1].isupper():
            return Value(MODULE)
        if isinstance(call.func, ast.Name) and call.func.id in self.modules:
            return Value(MODULE)
        if isinstance(call.func, ast.Attribute):
            method, receiver = call.func.attr, self.value(call.func.value, env)
            accelerator = receiver if isinstance(receiver, Value) and receiver.kind == ACCELERATOR else None
            if accelerator is not None:
                return self.accelerator_method_value(method, call, accelerator, env)
            if method == "from_pretrained" and _is_model_class(call.func.value):
                return Value(MODULE)
            if isinstance(receiver, Value):
                if method == "state_dict" and receiver.kind == MODEL:
                    return Value(STATE_DICT)
                if method in ("to", "cuda", "float", "half", "bfloat16") and receiver.kind in (BATCH, MODULE):
                    return receiver
        return None

    def accelerator_method_value(self, method: str, call: ast.Call, accelerator: Value, env: Env) -> Bound:
        info = accelerator.accelerator
        assert info is not None
        placement = keyword(call, "device_placement") is None and info.device_placement is True
        if method == "prepare":
            if opaque(call):
                return None
            items = tuple(self.prepared(arg, placement, env) for arg in call.args)
            return items[0] if len(items) == 1 else Several(items)
        kinds = {"prepare_model": MODEL, "prepare_optimizer": OPTIMIZER, "prepare_data_loader": LOADER,
                 "prepare_scheduler": SCHEDULER}
        if method in kinds and call.args:
            return Value(kinds[method], placed=placement and kinds[method] in (MODEL, LOADER))
        if method == "skip_first_batches" and call.args:
            inner = self.value(call.args[0], env)
            return inner if isinstance(inner, Value) and inner.kind == LOADER else None
        return None

    def prepared(self, arg: ast.expr, placement: bool, env: Env) -> Value | None:
        """What ``prepare`` returns for one argument, when the checker is sure."""
        value = self.value(arg, env)
        kind = value.kind if isinstance(value, Value) else None
        if kind in (RAW_OPTIMIZER, OPTIMIZER):
            return Value(OPTIMIZER)
        if kind in (RAW_LOADER, LOADER):
            return Value(LOADER, placed=placement)
        if kind in (RAW_SCHEDULER, SCHEDULER):
            return Value(SCHEDULER)
        if kind in (MODULE, MODEL) or (isinstance(arg, ast.Name) and arg.id in self.evidence and kind is None):
            return Value(MODEL, placed=placement)
        return None

    def element(self, iterable: ast.expr, env: Env) -> Bound:
        """What a ``for`` over ``iterable`` binds."""
        if isinstance(iterable, ast.Call):
            func = iterable.func
            if isinstance(func, ast.Name) and func.id == "enumerate" and iterable.args:
                inner = self.element(iterable.args[0], env)
                return Several((None, inner)) if isinstance(inner, Value) else None
            if ((isinstance(func, ast.Name) and func.id == "tqdm") or self.qualname(func) in ("tqdm.tqdm",
                                                                                            "tqdm.auto.tqdm")) \
                    and iterable.args:
                return self.element(iterable.args[0], env)
            if isinstance(func, ast.Attribute) and func.attr in ("items", "values") and not iterable.args:
                inner = self.value(func.value, env)
                if isinstance(inner, Value) and inner.kind == BATCH:
                    return Several((None, inner)) if func.attr == "items" else inner
        value = self.value(iterable, env)
        if isinstance(value, Value) and value.kind == LOADER:
            return Value(BATCH, placed=value.placed)
        if isinstance(value, Value) and value.kind == BATCH:
            return value
        return None

    def accelerator_info(self, call: ast.Call, env: Env) -> AcceleratorInfo:
        placement = keyword(call, "device_placement")
        placed = literal(placement) if placement is not None else (None if opaque(call) else True)
        steps_node = keyword(call, "gradient_accumulation_steps")
        plugin_node = keyword(call, "gradient_accumulation_plugin")
        steps: int | None = 0
        if steps_node is not None:
            steps = value if isinstance(value := literal(steps_node), int) else None
        elif plugin_node is not None:
            steps = None
            if isinstance(plugin_node, ast.Call) and self.qualname(plugin_node.func) in ACCUMULATION_PLUGIN_NAMES:
                num = literal(keyword(plugin_node, "num_steps"))
                steps = num if isinstance(num, int) else None
        ds = keyword(call, "deepspeed_plugin")
        stage: int | None = None
        if ds is not None:
            plugin = self.value(ds, env)
            if isinstance(plugin, Value) and plugin.kind == PLUGIN:
                stage = plugin.stage
        return AcceleratorInfo(
            line=call.lineno, device_placement=placed if isinstance(placed, bool) else None, accumulation=steps,
            mixed_precision=keyword(call, "mixed_precision") is not None,
            sharding_plugin=ds is not None or keyword(call, "fsdp_plugin") is not None, zero_stage=stage,
            opaque=opaque(call))

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
        if name is not None and name.startswith("torch.distributed.") and name.rsplit(".", 1)[1] in TORCH_COLLECTIVES \
                and self._guard:
            facts.found.append((call.lineno, "collective-on-main-process",
                                f"{_source(call.func)}() under a rank check: every process must call it"))
        if name in ("torch.save", "safetensors.torch.save_file", "safetensors.torch.save_model") and call.args:
            self.note_save(call, call.args[0], env)
        if name == "torch.utils.checkpoint.checkpoint" or (name or "").startswith("torch.utils.checkpoint."):
            facts.checkpointing = True
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
        if method == "backward" and not call.args:
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
                                    (f"{_source(call)} moves {what}, which the accelerator already puts on "
                                    "its device")))
        if method == "save_pretrained" and kind == MODEL:
            facts.found.append((call.lineno, "save-wrapped-model",
                                f"{_source(call)} saves the prepared (wrapped) model"))
        if method == "step" and kind == RAW_OPTIMIZER:
            assert isinstance(receiver, Value)
            facts.stepped.add(receiver.key)
        if method == "from_pretrained" and _is_model_class(receiver_node):
            first = literal(call.args[0]) if call.args else literal(keyword(call, "pretrained_model_name_or_path"))
            facts.pretrained.append((call.lineno, first if isinstance(first, str) else None))
        if method == "gradient_checkpointing_enable":
            facts.checkpointing = True

    def accelerator_method(self, call: ast.Call, method: str, accelerator: Value, env: Env) -> None:
        facts = self.facts
        if method in COLLECTIVE_METHODS and self._guard:
            facts.found.append((call.lineno, "collective-on-main-process",
                                f"{_source(call.func)}() under a rank check: every process must call it"))
        if method == "backward":
            facts.accelerator_backward.append(call.lineno)
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
                    if isinstance(arg, ast.Name):
                        facts.prepared_names.add(arg.id)

    # ---- small judgements -------------------------------------------------------------------
    def note_save(self, call: ast.Call, saved: ast.expr, env: Env) -> None:
        value = self.value(saved, env)
        if isinstance(value, Value) and value.kind in (STATE_DICT, MODEL):
            what = "the prepared model's state_dict()" if value.kind == STATE_DICT else "the prepared model"
            self.facts.found.append((call.lineno, "save-wrapped-model",
                                     f"{_source(call.func)}({_source(saved)}, ...) saves {what}"))

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

    def is_rank_read(self, node: ast.expr) -> bool:
        return self._rank_read(node) is not None

    def _rank_read(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Subscript) and self.qualname(node.value) == "os.environ":
            key = literal(node.slice)
            if key in RANK_VARIABLES:
                return f"os.environ[{key!r}]"
        if isinstance(node, ast.Call):
            name = self.qualname(node.func)
            if name in ("os.environ.get", "os.getenv") and node.args and literal(node.args[0]) in RANK_VARIABLES:
                return f"{_source(node.func)}({literal(node.args[0])!r})"
            if name in ("torch.distributed.get_rank", "torch.distributed.get_world_size",
                        "torch.distributed.get_local_rank"):
                return f"{_source(node.func)}()"
        return None

    def note_rank_read(self, node: ast.expr) -> None:
        what = self._rank_read(node)
        if what is not None:
            self._rank_reads.append((self._scope, node.lineno, f"{what} reads the rank or world size directly"))

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
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
               for stmt in loop.body for n in ast.walk(stmt)):
            self.facts.trained_on.add(value.key)
        if (self._scope, value) not in self._loaders:
            self._loaders.append((self._scope, value))


def _model_evidence(tree: ast.Module) -> set[str]:
    """Names used as models somewhere (``x.parameters()``, ``x.train()``, ``accelerator.accumulate(x)``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            if isinstance(receiver, ast.Name) and node.func.attr in ("parameters", "named_parameters", "train",
                                                                     "eval", "gradient_checkpointing_enable",
                                                                     "named_modules", "modules"):
                names.add(receiver.id)
            if node.func.attr in ("accumulate", "unwrap_model", "save_model") and node.args and \
                    isinstance(node.args[0], ast.Name):
                names.add(node.args[0].id)
    return names


def _parameters_of(node: ast.expr | None) -> str | None:
    """``model`` for ``model.parameters()`` / ``model.named_parameters()``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("parameters", "named_parameters") and isinstance(node.func.value, ast.Name):
        return node.func.value.id
    return None


def _is_model_class(node: ast.expr) -> bool:
    """``AutoModelForCausalLM``, ``GPT2LMHeadModel``, ``transformers.BertForMaskedLM`` (not tokenizers, configs)."""
    name = _tail(node)
    return name is not None and ("Model" in name or "For" in name) and "Tokenizer" not in name \
        and "Config" not in name and "Processor" not in name


def _tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _source(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


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
