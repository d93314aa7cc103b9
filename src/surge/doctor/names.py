"""What the names of a training script hold, read off its syntax tree (doctor/values.py's
values): the Accelerator, what ``prepare`` returns position by position, the batches of a
prepared DataLoader. The base of doctor/scan.py's walk; no facts are recorded here.
"""

from __future__ import annotations

import ast
import re

from surge.doctor.values import (
    ACCELERATOR,
    ACCELERATOR_NAMES,
    ACCUMULATION_PLUGIN_NAMES,
    BATCH,
    CPU,
    DATALOADER_NAMES,
    DEVICE,
    LOADER,
    MODEL,
    MODULE,
    OPTIMIZER,
    OUTPUT,
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
RANK_VARIABLES = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"})
_DEVICE_TEXT = re.compile(r"^(cuda|cpu|mps|xpu|npu|hpu)(:\d+)?$")


class Names:
    """The values of expressions, given the names bound so far (``env``) and the imports."""

    def __init__(self, tree: ast.Module) -> None:
        self.imports: dict[str, str] = {}  # local name -> qualified name
        self.modules: set[str] = set()  # classes defined here that are nn.Modules
        self.evidence = _model_evidence(tree)
        self.iterated = _iterated(tree) - self.evidence  # names a for loop runs over: data loaders

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
                return f"{source_text(node.func)}({literal(node.args[0])!r})"
            if name in ("torch.distributed.get_rank", "torch.distributed.get_world_size",
                        "torch.distributed.get_local_rank"):
                return f"{source_text(node.func)}()"
        return None

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

    # ---- values ---------------------------------------------------------------------------
    def value(self, node: ast.expr, env: Env) -> Bound:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DEVICE_TEXT.match(node.value):
            return Value(CPU if node.value == "cpu" else DEVICE)
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("cuda"):
            return Value(DEVICE)
        if isinstance(node, ast.IfExp):
            body, orelse = self.value(node.body, env), self.value(node.orelse, env)
            if body == orelse:
                return body
            # "cuda" if torch.cuda.is_available() else "cpu": an accelerator device where there is one
            return Value(DEVICE) if {body, orelse} == {Value(DEVICE), Value(CPU)} else None
        if isinstance(node, ast.Tuple):
            return Several(tuple(v if isinstance(v := self.value(e, env), Value) else None for e in node.elts))
        if isinstance(node, (ast.Subscript, ast.Attribute)):
            if self.is_rank_read(node):
                return Value(RANK)
            inner = self.value(node.value, env)
            if isinstance(inner, Value) and inner.kind in (BATCH, OUTPUT):
                return inner
            if isinstance(node, ast.Subscript) and isinstance(inner, Several):
                index = literal(node.slice)
                if isinstance(index, int) and -len(inner.items) <= index < len(inner.items):
                    return inner.items[index]
            return None
        if isinstance(node, ast.Call):
            return self.call_value(node, env)
        if isinstance(node, (ast.ListComp, ast.DictComp, ast.GeneratorExp, ast.SetComp)):
            # {k: v.to(...) for k, v in batch.items()} is still the batch
            element = self.element(node.generators[0].iter, env)
            parts = element.items if isinstance(element, Several) else (element,)
            return next((part for part in parts if part is not None and part.kind == BATCH), None)
        if isinstance(node, ast.BinOp) and Value(OUTPUT) in (self.value(node.left, env), self.value(node.right, env)):
            return Value(OUTPUT)
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
            source = parameters_of(call.args[0] if call.args else keyword(call, "params"))
            return Value(RAW_OPTIMIZER, key=id(call), line=call.lineno, source=source,
                         source_kind=env[source].kind if source in env else None,
                         source_key=env[source].key if source in env else 0)
        if name == "torch.device":
            first = call.args[0] if call.args else keyword(call, "type")
            return Value(CPU) if literal(first) == "cpu" else self.value(first, env) if first is not None else None
        if isinstance(call.func, ast.Name) and call.func.id == "int" and call.args:
            inner = self.value(call.args[0], env)
            return inner if isinstance(inner, Value) and inner.kind == RANK else None
        if self.is_rank_read(call):
            return Value(RANK)
        if name is not None and name.startswith("torch.nn.") and name.rsplit(".", 1)[1][:1].isupper():
            return Value(MODULE, key=id(call), line=call.lineno)
        if isinstance(call.func, ast.Name) and call.func.id in self.modules:
            return Value(MODULE, key=id(call), line=call.lineno)
        if isinstance(call.func, ast.Attribute):
            method, receiver = call.func.attr, self.value(call.func.value, env)
            accelerator = receiver if isinstance(receiver, Value) and receiver.kind == ACCELERATOR else None
            if accelerator is not None:
                return self.accelerator_method_value(method, call, accelerator, env)
            if method == "from_pretrained" and is_model_class(call.func.value):
                return Value(MODULE, key=id(call), line=call.lineno)
            if isinstance(receiver, Value):
                if method == "state_dict" and receiver.kind == MODEL:
                    return Value(STATE_DICT)
                if method in ("to", "cuda", "float", "half", "bfloat16") and receiver.kind in (BATCH, MODULE):
                    return receiver
                if receiver.kind == OUTPUT:
                    return receiver  # loss.mean(), outputs.loss.float()
        return self.output_of(call, env)

    def output_of(self, call: ast.Call, env: Env) -> Value | None:
        """``model(x)`` on a prepared model, or a function of such an output (``loss_fn(model(x), y)``)."""
        if isinstance(call.func, (ast.Name, ast.Attribute)):
            called = self.value(call.func, env)
            if isinstance(called, Value) and called.kind == MODEL:
                return Value(OUTPUT)
        arguments = [*call.args, *(kw.value for kw in call.keywords)]
        if any(self.value(arg.value if isinstance(arg, ast.Starred) else arg, env) == Value(OUTPUT)
               for arg in arguments):
            return Value(OUTPUT)
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
        if kind is None and isinstance(arg, ast.Name) and arg.id in self.iterated:
            # of what prepare takes (models, optimizers, loaders, schedulers) only loaders are looped over
            return Value(LOADER, placed=placement)
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


def _iterated(tree: ast.Module) -> set[str]:
    """Names a ``for`` loop (or comprehension) runs over, directly or through enumerate / tqdm."""
    names: set[str] = set()
    for node in ast.walk(tree):
        iterable = node.iter if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) else None
        while isinstance(iterable, ast.Call) and iterable.args and tail(iterable.func) in ("enumerate", "tqdm"):
            iterable = iterable.args[0]
        if isinstance(iterable, ast.Name):
            names.add(iterable.id)
    return names


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

def parameters_of(node: ast.expr | None) -> str | None:
    """``model`` for ``model.parameters()`` / ``model.named_parameters()``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("parameters", "named_parameters") and isinstance(node.func.value, ast.Name):
        return node.func.value.id
    return None


def is_model_class(node: ast.expr) -> bool:
    """``AutoModelForCausalLM``, ``GPT2LMHeadModel``, ``transformers.BertForMaskedLM`` (not tokenizers, configs)."""
    name = tail(node)
    return name is not None and ("Model" in name or "For" in name) and "Tokenizer" not in name \
        and "Config" not in name and "Processor" not in name


def tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def source_text(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."
