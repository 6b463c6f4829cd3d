"""hardware=auto: each device name nvidia-smi reports picks exactly one conf/hardware entry, or
none (measured peaks only, with how to add one); overlapping entries are a conf error."""

import pytest

from pipeline.analysis.roofline import select_hardware
from pipeline.config import ConfigError, HardwareConfig
from pipeline.plan.conf import ConfTree
from tests.conftest import CONF

AUTO = HardwareConfig(name="auto", kind="auto")


@pytest.fixture(scope="module")
def catalog() -> list[HardwareConfig]:
    tree = ConfTree(CONF, ["hardware=auto"])  # as collect.py builds it
    assert tree.requested_hardware().kind == "auto"
    return tree.hardware_entries()


@pytest.mark.parametrize(
    ("device", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("NVIDIA A100-SXM4-40GB", "a100-40g"),
        ("NVIDIA A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA A100 80GB PCIe", "a100-80g-pcie"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA L4", "l4"),
        # spelling noise that names the same part
        ("H200", "h200"),
        ("nvidia  h100 nvl ", "h100-nvl"),
        ("GeForce RTX 4090", "rtx-4090"),
    ],
)
def test_a_device_name_picks_its_entry(catalog, device, entry):
    assert select_hardware(AUTO, {"gpu": device, "cpu": "AMD EPYC"}, catalog).name == entry


@pytest.mark.parametrize(
    "device",
    [
        "NVIDIA GH200 480GB",  # two memory variants under similar names: no figures we are sure of
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA H100 SXM5 94GB",
        "NVIDIA L40S",
    ],
)
def test_a_near_miss_is_unlisted_and_says_how_to_fix_it(catalog, device):
    entry = select_hardware(AUTO, {"gpu": device}, catalog)
    assert entry.name == f"unlisted: {device}" and entry.kind == "gpu"
    assert entry.memory_bandwidth_gbs is None and entry.peak_tflops == {}
    assert "add conf/hardware/NAME.yaml" in entry.source and "hardware=NAME" in entry.source
    assert f"match: ['{device.removeprefix('NVIDIA ')}']" in entry.source  # a pattern that fits this name


def test_each_entrys_own_patterns_pick_it_alone(catalog):
    for entry in (e for e in catalog if e.kind == "gpu"):
        for pattern in entry.match:
            name = "NVIDIA " + pattern.replace("?", "")  # the patterns are names with at most an optional letter
            assert select_hardware(AUTO, {"gpu": name}, catalog) is entry


def test_two_entries_that_fit_one_name_are_a_conf_error(catalog):
    broad = HardwareConfig(name="h200-any", kind="gpu", match=["H200.*"], memory_bandwidth_gbs=4800)
    with pytest.raises(ConfigError, match=r"'NVIDIA H200 NVL' fits .* entry: h200-nvl, h200-any;"):
        select_hardware(AUTO, {"gpu": "NVIDIA H200 NVL"}, [*catalog, broad])


def test_a_cpu_gets_the_cpu_entry(catalog):
    for detected in ({"cpu": "AMD EPYC 7B13", "gpu": None}, {"cpu": "AMD EPYC 7B13"}):
        entry = select_hardware(AUTO, detected, catalog)
        assert entry.name == "cpu" and entry.kind == "cpu" and entry.memory_bandwidth_gbs is None


def test_an_explicit_entry_is_returned_as_is(catalog):
    tree = ConfTree(CONF, ["hardware=h100-nvl"])
    requested = tree.requested_hardware()
    assert requested.kind == "gpu"
    for detected in ({"gpu": "NVIDIA L4"}, {"gpu": "NVIDIA GH200 480GB"}, {"cpu": "x"}):
        assert select_hardware(requested, detected, catalog) is requested
    assert requested.memory_bandwidth_gbs == 3900 and requested.memory_gb == 94


def test_an_invalid_pattern_is_caught_when_the_entry_is_read():
    with pytest.raises(ConfigError, match=r"hardware bad: match 'H100 \(' is not a valid regex"):
        HardwareConfig(name="bad", kind="gpu", match=["H100 ("])
    with pytest.raises(ConfigError, match="must be a list of regexes"):
        HardwareConfig(name="bad", kind="gpu", match="H100")


def test_a_gpu_datasheet_asked_by_name_must_be_this_machines_gpu(catalog):
    from pipeline.analysis.roofline import check_requested_hardware

    h200 = ConfTree(CONF, ["hardware=h200"]).requested_hardware()
    check_requested_hardware(h200, ["NVIDIA H200"], catalog)  # the right one
    check_requested_hardware(AUTO, [], catalog)  # auto: whatever is found
    with pytest.raises(ConfigError, match=r"hardware=h200 .* does not fit this machine's GPU 'NVIDIA H100 80GB HBM3'"):
        check_requested_hardware(h200, ["NVIDIA H100 80GB HBM3"], catalog)
    with pytest.raises(ConfigError, match="use hardware=auto, or hardware=h100-sxm"):
        check_requested_hardware(h200, ["NVIDIA H100 80GB HBM3"], catalog)
    with pytest.raises(ConfigError, match="or a new conf/hardware entry"):
        check_requested_hardware(h200, ["NVIDIA GH200 480GB"], catalog)
    with pytest.raises(ConfigError, match="hardware=h200 is a GPU's datasheet but this machine has no GPU"):
        check_requested_hardware(h200, [], catalog)
