"""The price catalog (prices.yaml), the device we run on, and the price per hour of a trial.

price per hour = GPUs x GPU price x tier multiplier + vCPUs x vCPU price, unless an explicit
price per hour (--price-per-hour) overrides it. torch is only imported inside detect_device().
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
import os
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CATALOG_PATH = Path(__file__).resolve().with_name("prices.yaml")
OVERRIDE_FLAG = "--price-per-hour"
_Add = Callable[[str, Any, str], None]  # reports one problem: key path, bad value, how to fix

SPEC_KEYS = ("peak_tflops_bf16", "peak_tflops_fp32", "memory_bandwidth_gb_s")  # optional; the planner needs them
TOP_KEYS = ("as_of", "currency", "sources", "tiers", "cpu", "gpus")
GPU_KEYS = ("name", "match", "memory_gb", "usd_per_hour", "low", "high", "source", "note", *SPEC_KEYS, "spec_source")
CPU_KEYS = ("usd_per_vcpu_hour", "low", "high", "source")
TIER_KEYS = ("multiplier", "low", "high", "source")


class CatalogError(ValueError):
    """A price catalog with problems; `problems` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in price catalog {path}:\n{listing}")


class PriceError(ValueError):
    """No price can be given for this device (unknown or ambiguous GPU, bad override)."""


@dataclass(frozen=True)
class GpuPrice:
    key: str
    name: str
    match: tuple[tuple[str, ...], ...]  # alternatives, each a set of words that must all be in the name
    memory_gb: float
    usd_per_hour: float
    low: float
    high: float
    source: str
    note: str = ""
    specs: dict[str, float] = field(default_factory=dict)  # SPEC_KEYS that the entry gives


@dataclass(frozen=True)
class Catalog:
    path: str
    as_of: str
    currency: str
    sources: dict[str, str]
    cpu_usd_per_vcpu_hour: float
    cpu_source: str
    gpus: tuple[GpuPrice, ...]
    tiers: dict[str, float] = field(default_factory=lambda: {"specialty": 1.0})


@dataclass(frozen=True)
class DeviceInfo:
    kind: Literal["cpu", "cuda"]
    name: str  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model
    gpus: int  # visible CUDA devices
    cpus: int  # CPUs this process may run on
    memory_gb: float | None = None  # of one GPU, to tell A100 40GB from 80GB


@dataclass(frozen=True)
class PriceQuote:
    usd_per_hour: float
    source: str
    device_key: str  # catalog key of the GPU, "cpu", or "override"
    as_of: str
    gpus: float = 0.0
    cpus: float = 0.0
    gpu_usd_per_hour: float = 0.0  # per GPU, tier included
    cpu_usd_per_vcpu_hour: float = 0.0


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and check a catalog (default: tracking/prices.yaml); all problems reported at once."""
    file = Path(path) if path is not None else CATALOG_PATH
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CatalogError(str(file), [f"{file}: <file>: {err}: give a readable YAML price catalog"]) from err
    problems = check_catalog(data, str(file))
    if problems:
        raise CatalogError(str(file), problems)
    as_of = data["as_of"]
    tiers = {str(k): float(v["multiplier"]) for k, v in (data.get("tiers") or {}).items()}
    return Catalog(
        path=str(file),
        as_of=as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of),
        currency=str(data["currency"]),
        sources={str(k): str(v) for k, v in data["sources"].items()},
        cpu_usd_per_vcpu_hour=float(data["cpu"]["usd_per_vcpu_hour"]),
        cpu_source=str(data["cpu"]["source"]),
        gpus=tuple(_gpu(str(key), entry) for key, entry in data["gpus"].items()),
        tiers=tiers or {"specialty": 1.0},
    )


def detect_device() -> DeviceInfo:
    """The first CUDA device if torch sees one, else the CPU. Without torch installed: CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return DeviceInfo("cpu", _cpu_name(), 0, cpus)
    if not torch.cuda.is_available():
        return DeviceInfo("cpu", _cpu_name(), 0, cpus)
    memory = torch.cuda.get_device_properties(0).total_memory / 1e9
    return DeviceInfo("cuda", torch.cuda.get_device_name(0), torch.cuda.device_count(), cpus, memory)


def match_price(catalog: Catalog, device_name: str, memory_gb: float | None = None) -> GpuPrice:
    """The catalog entry for a GPU marketing name such as "NVIDIA A100-SXM4-80GB"."""
    words = set(_words(device_name))
    scored = [(max((len(alt) for alt in g.match if set(alt) <= words), default=0), g) for g in catalog.gpus]
    best = max((score for score, _ in scored), default=0)
    candidates = [g for score, g in scored if score == best and score > 0]
    if not candidates:
        known = ", ".join(g.name for g in catalog.gpus)
        raise PriceError(
            f"no price for GPU {device_name!r} in the price catalog {catalog.path} (known: {known}); "
            f"pass {OVERRIDE_FLAG} USD (what the trial's machine costs per hour) or add an entry "
            f"under `gpus:` in {catalog.path}"
        )
    stated = re.search(r"(\d+)\s*gb", device_name.lower())
    memory = float(stated.group(1)) if stated else memory_gb
    if len(candidates) == 1:
        return candidates[0]
    if memory is None:
        keys = [g.key for g in candidates]
        raise PriceError(
            f"GPU {device_name!r} matches several catalog entries {keys} and its memory is unknown; "
            f"pass {OVERRIDE_FLAG} USD or make the `match` words in {catalog.path} tell them apart"
        )
    return min(candidates, key=lambda g: abs(g.memory_gb - memory))


def price_per_hour(
    device: DeviceInfo | str,
    gpus: float,
    cpus: float,
    override: float | None = None,
    *,
    catalog: Catalog | None = None,
    tier: str = "specialty",
    gpu_key: str | None = None,
) -> PriceQuote:
    """What the resources of one trial cost per hour. `device` is a DeviceInfo or a device name
    ("cpu" or a GPU name). An explicit `override` (USD per hour for the whole trial) wins. `gpu_key`
    (a catalog key) prices GPUs that the device itself lacks or that the catalog does not know: a CPU head
    driving a GPU cluster, a trial on a node whose GPU has no entry."""
    if gpus < 0 or cpus < 0:
        raise PriceError(f"resources: gpus={gpus}, cpus={cpus}: counts cannot be negative")
    if override is not None:
        if not math.isfinite(override) or override <= 0:
            raise PriceError(
                f"{OVERRIDE_FLAG}: {override!r}: give a positive price in USD per hour, e.g. 3.0"
            )
        return PriceQuote(override, f"override ({OVERRIDE_FLAG})", "override", "override", gpus, cpus)
    catalog = catalog if catalog is not None else load_catalog()
    if tier not in catalog.tiers:
        raise PriceError(f"tier: {tier!r}: unknown; use one of {list(catalog.tiers)} from {catalog.path}")
    info = device if isinstance(device, DeviceInfo) else _device_from_name(device)
    cpu_price = catalog.cpu_usd_per_vcpu_hour
    if gpus == 0:
        return PriceQuote(cpus * cpu_price, catalog.cpu_source, "cpu", catalog.as_of, 0, cpus, 0.0, cpu_price)
    if info.kind == "cuda":
        try:
            gpu = match_price(catalog, info.name, info.memory_gb)
        except PriceError:
            if gpu_key is None:
                raise
            gpu = gpu_by_key(catalog, gpu_key)  # a GPU the catalog does not know: the named model
    elif gpu_key is not None:  # a GPU-less machine
        gpu = gpu_by_key(catalog, gpu_key)
    else:
        raise PriceError(
            f"resources: gpus={gpus:g}: this machine has no GPU ({info.name!r}) to price them by; name the "
            f"cluster's GPU with `gpu: KEY` in the sweep config (known: {', '.join(g.key for g in catalog.gpus)}) "
            f"or pass {OVERRIDE_FLAG} USD (what one trial's resources cost per hour)"
        )
    multiplier = catalog.tiers[tier]
    source = gpu.source + (f" x {multiplier:g} ({tier})" if multiplier != 1 else "")
    source += f" + {catalog.cpu_source}" if cpus else ""
    gpu_price = gpu.usd_per_hour * multiplier
    total = gpus * gpu_price + cpus * cpu_price
    return PriceQuote(total, source, gpu.key, catalog.as_of, gpus, cpus, gpu_price, cpu_price)


def gpu_by_key(catalog: Catalog, key: str) -> GpuPrice:
    """The catalog entry of a key such as "a100-80gb", as a sweep config's `gpu:` names it."""
    for gpu in catalog.gpus:
        if gpu.key == key:
            return gpu
    raise PriceError(
        f"gpu: {key!r}: not in the price catalog {catalog.path}; use one of "
        f"{', '.join(g.key for g in catalog.gpus)}, or add it under `gpus:` there"
    )


def reservation(quote: PriceQuote) -> dict[str, Any]:
    """A method's quote as the trial settings that price it where it runs (trainers.config): the reserved
    GPUs and CPUs, and the GPU model the driver priced them at, for a node whose GPU the catalog lacks."""
    key = {"gpu": quote.device_key} if quote.gpus and quote.device_key not in ("cpu", "override") else {}
    return {"reserved_gpus": quote.gpus, "reserved_cpus": quote.cpus, **key}


def method_quotes(
    resources: Mapping[str, Any],
    device: DeviceInfo,
    override: float | None = None,
    gpu_key: str | None = None,
    *,
    catalog: Catalog | None = None,
) -> dict[str, PriceQuote]:
    """The price of each method from what Ray reserves for one of its trials (`resources[method]` has
    .gpus and .cpus per worker, and .workers): workers x (GPUs x GPU price + CPUs x CPU price). The
    driver's own GPU sets the GPU model; without one, the catalog key `gpu_key`."""
    quotes: dict[str, PriceQuote] = {}
    needs_catalog = override is None
    catalog = catalog if catalog is not None or not needs_catalog else load_catalog()
    for method, res in resources.items():
        try:
            workers = getattr(res, "workers", 1)
            quotes[method] = price_per_hour(
                device, res.gpus * workers, res.cpus * workers, override, catalog=catalog, gpu_key=gpu_key
            )
        except PriceError as err:
            raise PriceError(f"method {method}: {err}") from err
    return quotes


def check_catalog(data: Any, path: str) -> list[str]:
    """Every problem of a parsed catalog, as `<file>: <key path>: <bad value>: <how to fix>`."""
    problems: list[str] = []

    def add(where: str, value: Any, fix: str) -> None:
        problems.append(f"{path}: {where}: {value!r}: {fix}")

    if not isinstance(data, Mapping):
        add("<top level>", data, f"write a mapping with keys {list(TOP_KEYS)}")
        return problems
    _unknown_keys(data, TOP_KEYS, "", add)
    as_of = data.get("as_of")
    if not (
        isinstance(as_of, dt.date)
        or (isinstance(as_of, str) and re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", as_of))
    ):
        add("as_of", as_of, 'date the prices, e.g. as_of: "2026-05"')
    if data.get("currency") != "USD":
        add(
            "currency",
            data.get("currency"),
            "budgets are in US dollars; give prices in USD and write currency: USD",
        )
    sources = data.get("sources")
    if not isinstance(sources, Mapping) or not sources:
        add("sources", sources, "name where the prices come from: a mapping of source id to description")
        sources = {}
    for key, text in sources.items():
        if not isinstance(text, str) or not text.strip():
            add(f"sources.{key}", text, "describe the source (who, what, when)")
    tiers = data.get("tiers") or {}
    for name, tier in tiers.items() if isinstance(tiers, Mapping) else [("", tiers)]:
        _check_priced(tier, f"tiers.{name}", "multiplier", TIER_KEYS, sources, add)
    _check_priced(data.get("cpu"), "cpu", "usd_per_vcpu_hour", CPU_KEYS, sources, add)
    gpus = data.get("gpus")
    if not isinstance(gpus, Mapping) or not gpus:
        add("gpus", gpus, "give a mapping of GPU key to its price entry")
        return problems
    for key, entry in gpus.items():
        where = f"gpus.{key}"
        if not _check_priced(entry, where, "usd_per_hour", GPU_KEYS, sources, add):
            continue
        match = entry.get("match")
        if (
            not isinstance(match, list)
            or not match
            or not all(isinstance(m, str) and _words(m) for m in match)
        ):
            add(f"{where}.match", match, "list the words of the device name, e.g. [a100] or [rtx 4090]")
        if not isinstance(entry.get("name"), str):
            add(f"{where}.name", entry.get("name"), "give the marketing name, e.g. NVIDIA A100 80GB")
        memory = entry.get("memory_gb")
        if not (isinstance(memory, int | float) and not isinstance(memory, bool) and memory > 0):
            add(f"{where}.memory_gb", memory, "give the memory of one GPU in GB, e.g. 80")
        _check_specs(entry, where, sources, add)
    return problems


def _check_priced(
    entry: Any, where: str, price_key: str, allowed: tuple[str, ...], sources: Mapping[str, Any], add: _Add
) -> bool:
    """Checks an entry with a price and its [low, high] range; False if it is not even a mapping."""
    if not isinstance(entry, Mapping):
        add(where, entry, f"give a mapping with keys {list(allowed)}")
        return False
    _unknown_keys(entry, allowed, f"{where}.", add)
    values: dict[str, Any] = {k: entry.get(k) for k in (price_key, "low", "high")}
    bad = [
        k for k, v in values.items() if not (isinstance(v, int | float) and not isinstance(v, bool) and v > 0)
    ]
    for k in bad:
        add(f"{where}.{k}", values[k], "must be a positive number")
    if not bad and not values["low"] <= values[price_key] <= values["high"]:
        add(
            f"{where}.{price_key}",
            values[price_key],
            f"must lie in [low, high] = [{values['low']}, {values['high']}]",
        )
    if entry.get("source") not in sources:
        add(f"{where}.source", entry.get("source"), f"name one of the sources: {list(sources)}")
    return True


def _check_specs(entry: Mapping[str, Any], where: str, sources: Mapping[str, Any], add: _Add) -> None:
    """Datasheet figures are optional, but each one given is a positive number with a named source."""
    given = [k for k in SPEC_KEYS if k in entry]
    for key in given:
        value = entry[key]
        if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
            add(f"{where}.{key}", value, "must be a positive number (dense datasheet figure)")
    if given and entry.get("spec_source") not in sources:
        add(f"{where}.spec_source", entry.get("spec_source"), f"name where {given} come from: one of {list(sources)}")


def _unknown_keys(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str, add: _Add) -> None:
    for key in data:
        if key not in allowed:
            add(f"{prefix}{key}", data[key], f"unknown key; allowed: {list(allowed)}")


def _gpu(key: str, entry: Mapping[str, Any]) -> GpuPrice:
    return GpuPrice(
        key=key,
        name=str(entry["name"]),
        match=tuple(tuple(_words(alt)) for alt in entry["match"]),
        memory_gb=float(entry["memory_gb"]),
        usd_per_hour=float(entry["usd_per_hour"]),
        low=float(entry["low"]),
        high=float(entry["high"]),
        source=str(entry["source"]),
        note=str(entry.get("note", "")),
        specs={k: float(entry[k]) for k in SPEC_KEYS if k in entry},
    )


def _words(text: str) -> list[str]:
    # Whole words only: "a10" must not match "A100", nor "l4" match "L40S".
    return re.findall(r"[a-z0-9]+", text.lower())


def _device_from_name(name: str) -> DeviceInfo:
    if name.strip().lower() == "cpu":
        return DeviceInfo("cpu", "cpu", 0, os.cpu_count() or 1)
    return DeviceInfo("cuda", name, 1, os.cpu_count() or 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
