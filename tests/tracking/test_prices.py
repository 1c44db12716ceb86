"""The price catalog is valid and dated, GPUs are recognised by name, and prices add up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tracking import prices
from tracking.prices import (
    CATALOG_PATH,
    CatalogError,
    DeviceInfo,
    PriceError,
    check_catalog,
    detect_device,
    load_catalog,
    match_price,
    method_quotes,
    price_per_hour,
)

REPO = Path(__file__).resolve().parents[2]


def test_shipped_catalog_is_valid_dated_and_sourced() -> None:
    raw = yaml.safe_load(CATALOG_PATH.read_text())
    assert check_catalog(raw, str(CATALOG_PATH)) == []
    catalog = load_catalog()
    assert catalog.as_of == "2026-05"
    assert catalog.currency == "USD"
    assert catalog.sources and all(text.strip() for text in catalog.sources.values())
    for gpu in catalog.gpus:
        assert gpu.low <= gpu.usd_per_hour <= gpu.high, gpu.key
        assert gpu.usd_per_hour == pytest.approx((gpu.low + gpu.high) / 2), gpu.key  # midpoint, as documented
        assert gpu.source in catalog.sources
        if gpu.source.startswith("estimate"):
            assert "estimate" in gpu.note, f"{gpu.key}: estimates must say so in their note"
    cpu = raw["cpu"]
    assert cpu["low"] <= cpu["usd_per_vcpu_hour"] <= cpu["high"]
    for tier in raw["tiers"].values():
        assert tier["low"] <= tier["multiplier"] <= tier["high"]


def test_quoted_facts_are_the_ones_in_the_catalog() -> None:
    catalog = load_catalog()
    by_key = {g.key: g for g in catalog.gpus}
    assert (by_key["a100-80gb"].low, by_key["a100-80gb"].high) == (1.10, 1.50)
    assert (by_key["h100-sxm"].low, by_key["h100-sxm"].high) == (2.50, 3.50)
    assert (by_key["h200"].low, by_key["h200"].high) == (3.50, 4.50)
    assert catalog.cpu_usd_per_vcpu_hour == 0.045
    assert catalog.tiers["hyperscaler"] == 1.75


@pytest.mark.parametrize(
    ("name", "memory_gb", "key"),
    [
        ("NVIDIA H100 80GB HBM3", None, "h100-sxm"),
        ("NVIDIA H100 PCIe", None, "h100-sxm"),
        ("nvidia h200", None, "h200"),
        ("NVIDIA A100-SXM4-80GB", None, "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", None, "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", None, "a100-40gb"),
        ("NVIDIA A100-SXM4", 85.1, "a100-80gb"),  # memory as torch reports it, in GB
        ("NVIDIA A100-SXM4", 42.4, "a100-40gb"),
        ("NVIDIA A10G", None, "a10g"),
        ("NVIDIA A10", None, "a10g"),
        ("NVIDIA L4", None, "l4"),
        ("Tesla T4", None, "t4"),
        ("NVIDIA GeForce RTX 4090", None, "rtx-4090"),
    ],
)
def test_gpu_names_match(name: str, memory_gb: float | None, key: str) -> None:
    assert match_price(load_catalog(), name, memory_gb).key == key


@pytest.mark.parametrize(
    "name", ["NVIDIA L40S", "NVIDIA GH200 480GB", "AMD Instinct MI300X", "NVIDIA GeForce RTX 3090"]
)
def test_unknown_gpus_are_not_guessed(name: str) -> None:
    # Whole words only: "L40S" is not an L4 and "GH200" is not an H200.
    with pytest.raises(PriceError) as info:
        match_price(load_catalog(), name)
    message = str(info.value)
    assert repr(name) in message
    assert "--price-per-hour" in message and str(CATALOG_PATH) in message


def test_ambiguous_gpu_without_memory_is_an_error() -> None:
    with pytest.raises(PriceError, match=r"several catalog entries \['a100-80gb', 'a100-40gb'\]"):
        match_price(load_catalog(), "NVIDIA A100-SXM4")


def test_gpu_price_is_gpus_times_gpu_plus_cpus_times_cpu() -> None:
    h100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", gpus=8, cpus=64, memory_gb=85.0)
    quote = price_per_hour(h100, gpus=2, cpus=16)
    assert quote.usd_per_hour == pytest.approx(2 * 3.00 + 16 * 0.045)
    assert (quote.device_key, quote.as_of, quote.gpu_usd_per_hour) == ("h100-sxm", "2026-05", 3.00)
    assert "specialty-2026-05" in quote.source and "cpu-2026-05" in quote.source
    hyper = price_per_hour(h100, gpus=1, cpus=0, tier="hyperscaler")
    assert hyper.usd_per_hour == pytest.approx(3.00 * 1.75)
    by_name = price_per_hour("NVIDIA A100-SXM4-80GB", gpus=1, cpus=4)
    assert by_name.usd_per_hour == pytest.approx(1.30 + 4 * 0.045)


def test_cpu_price_is_cpus_times_vcpu_price() -> None:
    quote = price_per_hour("cpu", gpus=0, cpus=2)
    assert quote.usd_per_hour == pytest.approx(0.09)
    assert (quote.device_key, quote.source) == ("cpu", "cpu-2026-05")
    # A trial that holds no GPU on a GPU machine pays for its CPUs only.
    gpu_box = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 1, 16, 85.0)
    assert price_per_hour(gpu_box, gpus=0, cpus=4).usd_per_hour == pytest.approx(4 * 0.045)


def test_override_wins_and_needs_no_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = DeviceInfo("cuda", "NVIDIA L40S", 1, 8, 48.0)
    quote = price_per_hour(unknown, gpus=1, cpus=8, override=2.25)
    assert (quote.usd_per_hour, quote.device_key) == (2.25, "override")
    assert "--price-per-hour" in quote.source
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(PriceError, match="positive price"):
            price_per_hour(unknown, 1, 8, override=bad)
    # With an override, a broken default catalog does not stand in the way.
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpus: [")
    monkeypatch.setattr(prices, "CATALOG_PATH", broken)
    assert price_per_hour("cpu", 0, 2, override=1.0).usd_per_hour == 1.0
    with pytest.raises(CatalogError):
        price_per_hour("cpu", 0, 2)


def test_unknown_gpu_and_bad_requests_are_errors() -> None:
    with pytest.raises(PriceError, match="no price for GPU 'NVIDIA L40S'"):
        price_per_hour("NVIDIA L40S", gpus=1, cpus=8)
    with pytest.raises(PriceError, match="no GPU") as refused:
        price_per_hour(DeviceInfo("cpu", "AMD EPYC", 0, 2), gpus=1, cpus=2)
    assert "`gpu: KEY`" in str(refused.value) and "--price-per-hour" in str(refused.value)
    assert "a100-80gb" in str(refused.value)  # the known keys are listed
    with pytest.raises(PriceError, match="gpu: 'a100'.*a100-80gb"):
        price_per_hour(DeviceInfo("cpu", "AMD EPYC", 0, 2), gpus=1, cpus=2, gpu_key="a100")
    with pytest.raises(PriceError, match="unknown; use one of"):
        price_per_hour("cpu", 0, 2, tier="spot")
    with pytest.raises(PriceError, match="cannot be negative"):
        price_per_hour("cpu", 0, -1)


def test_catalog_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        """
as_of: last year
currency: EUR
sources: {quotes: "a price sheet"}
cpu: {usd_per_vcpu_hour: 0.05, low: 0.06, high: 0.07, source: quotes}
gpus:
  x1:
    name: X1
    match: []
    memory_gb: 0
    usd_per_hour: 2.0
    low: 1.0
    high: 3.0
    source: somewhere
    colour: green
  x2: {name: X2, match: [x2], memory_gb: 16, usd_per_hour: -1, low: 1, high: 2, source: quotes}
"""
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    problems = info.value.problems
    expected = [
        "as_of: 'last year'",
        "currency: 'EUR'",
        "cpu.usd_per_vcpu_hour: 0.05: must lie in [low, high]",
        "gpus.x1.colour: 'green': unknown key",
        "gpus.x1.source: 'somewhere': name one of the sources",
        "gpus.x1.match: []",
        "gpus.x1.memory_gb: 0",
        "gpus.x2.usd_per_hour: -1: must be a positive number",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert all(p.startswith(f"{path}: ") for p in problems)


def test_unreadable_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="readable YAML"):
        load_catalog(tmp_path / "missing.yaml")


def test_detect_device_reports_this_machine() -> None:
    device = detect_device()
    assert device.kind in ("cpu", "cuda")
    assert device.cpus >= 1 and device.name
    if device.kind == "cpu":
        assert device.gpus == 0 and device.memory_gb is None
    else:
        assert device.gpus >= 1 and device.memory_gb


def test_detect_device_without_torch_assumes_cpu() -> None:
    # A child interpreter where `import torch` fails, as on a machine without it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from tracking.prices import detect_device\n"
        "d = detect_device(); print(repr((d.kind, d.gpus)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert ast.literal_eval(out.stdout.strip()) == ("cpu", 0)


def test_importing_tracking_prices_and_cost_does_not_import_torch() -> None:
    code = "import sys, tracking.prices, tracking.cost; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_method_pays_for_what_ray_reserves_for_it() -> None:
    """A GPU-less driver names the cluster's GPU by catalog key; `gpus: 4` pays for four of them."""
    from sweeps.config import Resources

    head = DeviceInfo("cpu", "AMD EPYC", 0, 2)
    resources = {"none": Resources(cpus=2, gpus=0), "lora": Resources(cpus=4, gpus=1),
                 "full": Resources(cpus=8, gpus=4)}  # fmt: skip
    quotes = method_quotes(resources, head, gpu_key="a100-80gb")
    catalog = load_catalog()
    gpu, cpu = prices.gpu_by_key(catalog, "a100-80gb").usd_per_hour, catalog.cpu_usd_per_vcpu_hour
    assert (gpu, cpu) == (1.30, 0.045)  # the shipped catalog's A100 80GB and vCPU prices
    assert quotes["none"].usd_per_hour == pytest.approx(2 * cpu)
    assert quotes["lora"].usd_per_hour == pytest.approx(1 * gpu + 4 * cpu)
    assert quotes["full"].usd_per_hour == pytest.approx(4 * gpu + 8 * cpu)
    assert quotes["full"].device_key == "a100-80gb" and quotes["full"].gpus == 4
    # The driver's own GPU sets the model when it has one; an explicit price overrides every method.
    on_h100 = method_quotes(resources, DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 1, 8, 80.0))
    h100 = prices.gpu_by_key(catalog, "h100-sxm").usd_per_hour
    assert on_h100["full"].usd_per_hour == pytest.approx(4 * h100 + 8 * cpu)
    assert {q.usd_per_hour for q in method_quotes(resources, head, override=2.5).values()} == {2.5}
    with pytest.raises(PriceError, match="method lora: resources: gpus=1: .*no GPU.*`gpu: KEY`.*--price-per-hour"):
        method_quotes(resources, head)


def test_a_trial_pays_for_the_gpu_of_the_node_it_ran_on() -> None:
    """The driver hands each trial its method's reservation (prices.reservation); the trial prices it with
    its own node's GPU, so on a mixed cluster an H100 node bills H100s though the driver quoted A100s."""
    from sweeps.config import Resources

    catalog = load_catalog()
    gpu = {k: prices.gpu_by_key(catalog, k).usd_per_hour for k in ("a100-80gb", "h100-sxm")}
    cpu = catalog.cpu_usd_per_vcpu_hour
    driver = method_quotes({"full": Resources(cpus=8, gpus=2, workers=2)}, DeviceInfo("cpu", "EPYC", 0, 2),
                           gpu_key="a100-80gb")["full"]  # fmt: skip
    handed = prices.reservation(driver)
    assert handed == {"reserved_gpus": 4, "reserved_cpus": 16, "gpu": "a100-80gb"}
    as_handed = (handed["reserved_gpus"], handed["reserved_cpus"])
    h100_node = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 2, 32, 85.0)
    on_h100 = price_per_hour(h100_node, *as_handed, gpu_key=handed["gpu"])
    assert (on_h100.device_key, on_h100.usd_per_hour) == ("h100-sxm", pytest.approx(4 * gpu["h100-sxm"] + 16 * cpu))
    # A node whose GPU the catalog does not know is priced as the driver priced it, not refused mid-sweep.
    unknown = price_per_hour(DeviceInfo("cuda", "NVIDIA L40S", 2, 32, 48.0), *as_handed, gpu_key=handed["gpu"])
    assert (unknown.device_key, unknown.usd_per_hour) == ("a100-80gb", pytest.approx(driver.usd_per_hour))
    # CPU-only methods and explicit prices hand no GPU model.
    assert prices.reservation(price_per_hour("cpu", 0, 2)) == {"reserved_gpus": 0, "reserved_cpus": 2}
    assert "gpu" not in prices.reservation(price_per_hour("cpu", 1, 2, override=3.0))
