"""`mesh manifest check` (tools/manifest_check.py, tools/cli/manifest.py) over temporary trees:
a tree whose manifests, contracts and code agree passes; each kind of disagreement is one line
naming the manifest and the field, and makes the command exit 1."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from hms_tools.cli import main
from hms_tools.manifest_check import check_tree, servicers_in_code

from .test_manifest import BANK, CONTRACTS, FILES, PAID, SHOP, SOLD, STOCK

SHOP_CODE = """\
from hms.shop.v1 import shop_pb2_grpc


class Shop(shop_pb2_grpc.ShopServiceServicer):
    pass
"""
BANK_CODE = """\
from hms.bank.v1.bank_pb2_grpc import BankServiceServicer as Base


class Bank(Base):
    pass
"""
MAIN = "from mesh import run_service\n"


def manifest_text(name: str, serves: list[str], extra: str = "") -> str:
    listed = ", ".join(f'"{s}"' for s in serves)
    return (
        f'name = "{name}"\nversion = "1.0.0"\ndescription = "{name}"\nreplicas = 1\n'
        f'state = "none"\nserves = [{listed}]\n{textwrap.dedent(extra)}'
    )


SHOP_TOML = manifest_text(
    "shop",
    [SHOP],
    f"""\
    calls = ["{BANK}"]
    publishes = ["{SOLD}"]
    subscribes = ["{PAID}"]

    [[accepts]]
    from = ["gateway", "ops"]
    methods = ["*"]
    """,
)
BANK_TOML = manifest_text(
    "bank",
    [BANK],
    f"""\
    publishes = ["{PAID}"]
    subscribes = ["{SOLD}"]

    [[accepts]]
    from = ["shop"]
    methods = ["Charge"]
    """,
)


def write(root: Path, files: dict[str, str | None]) -> None:
    """Write each file (None: delete it)."""
    for relative, text in files.items():
        path = root / relative
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two services that agree with each other, the contracts and their code."""
    descriptors = descriptor_pb2.FileDescriptorSet(file=FILES)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "hms.binpb").write_bytes(descriptors.SerializeToString())
    write(
        tmp_path,
        {
            "services/__init__.py": "",
            "services/shop/service.toml": SHOP_TOML,
            "services/shop/main.py": MAIN,
            "services/shop/service.py": SHOP_CODE,
            "services/bank/service.toml": BANK_TOML,
            "services/bank/main.py": MAIN,
            "services/bank/service.py": BANK_CODE,
        },
    )
    return tmp_path


def lines(root: Path) -> list[str]:
    return [str(d) for d in sorted(check_tree(root))]


def test_a_tree_that_agrees(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lines(tree) == []
    assert main(["manifest", "check", "--root", str(tree)]) == 0
    assert capsys.readouterr().out == "2 manifest(s) agree with the contracts and the code\n"


def replaced(path: str, old: str, new: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        text = (root / path).read_text()
        assert old in text
        (root / path).write_text(text.replace(old, new))

    return change


def files(changes: dict[str, str | None]) -> Callable[[Path], None]:
    return lambda root: write(root, changes)


SHOP_FILE = "services/shop/service.toml"
BANK_FILE = "services/bank/service.toml"

DISAGREEMENTS = [
    pytest.param(
        files({"services/till/main.py": MAIN}),
        ["services/till: has a main.py but no service.toml"],
        id="main-without-manifest",
    ),
    pytest.param(
        files({"services/bank/main.py": None}),
        [f"{BANK_FILE}: services/bank has no main.py: mesh up cannot start it"],
        id="manifest-without-main",
    ),
    pytest.param(
        replaced(SHOP_FILE, "replicas = 1", "replicas = -2"),
        [f"{SHOP_FILE}: replicas: must be a whole number from 0 to 64, got -2 (an integer)"],
        id="bad-manifest",
    ),
    pytest.param(
        replaced(SHOP_FILE, f'serves = ["{SHOP}"]', f'serves = ["{SHOP}", "{STOCK}"]'),
        [f"{SHOP_FILE}: serves[1]: {STOCK} is declared, but no class in services/shop/ serves"],
        id="served-not-in-code",
    ),
    pytest.param(
        files({"services/shop/stock.py": SHOP_CODE.replace("ShopService", "StockService")}),
        [f"{SHOP_FILE}: serves: the code serves {STOCK} (services/shop/stock.py: class Shop)"],
        id="code-serves-undeclared",
    ),
    pytest.param(
        files(
            {
                "services/vault/service.toml": manifest_text("vault", [BANK]),
                "services/vault/main.py": MAIN,
                "services/vault/service.py": BANK_CODE,
            }
        ),
        [
            f"{SHOP_FILE}: calls[0]: vault serves {BANK} but accepts none of its methods",
            f"services/vault/service.toml: serves[0]: {BANK} is also served by bank",
        ],
        id="served-twice",
    ),
    pytest.param(
        replaced(SHOP_FILE, f'calls = ["{BANK}"]', f'calls = ["{BANK}", "{STOCK}"]'),
        [f"{SHOP_FILE}: calls[1]: no deployment serves {STOCK}"],
        id="callee-missing",
    ),
    pytest.param(
        replaced(BANK_FILE, 'from = ["shop"]', 'from = ["gateway"]'),
        [
            f"{SHOP_FILE}: calls[0]: bank serves {BANK} but accepts none of its methods from "
            f"shop (add an [[accepts]] to {BANK_FILE})"
        ],
        id="callee-refuses",
    ),
    pytest.param(
        replaced(BANK_FILE, f'publishes = ["{PAID}"]\n', ""),
        [f"{SHOP_FILE}: subscribes[0]: no deployment publishes {PAID}"],
        id="no-publisher",
    ),
    pytest.param(
        replaced(SHOP_FILE, 'from = ["gateway", "ops"]', 'from = ["gateway", "till"]'),
        [
            f"{SHOP_FILE}: accepts[0].from[1]: 'till' is not a deployment "
            "(services/*/service.toml), 'gateway', 'ops' or '*'"
        ],
        id="unknown-caller",
    ),
    pytest.param(
        replaced(SHOP_FILE, f'publishes = ["{SOLD}"]', 'publishes = ["hms.shop.v1.ItemLost"]'),
        [
            f"{SHOP_FILE}: publishes[0]: 'hms.shop.v1.ItemLost' is not a message type of the "
            "contracts (package hms.shop.v1 has: hms.shop.v1.Item, hms.shop.v1.ItemSold)"
        ],
        id="unknown-event",
    ),
    pytest.param(
        files({"gen/hms.binpb": None}),
        ["gen/hms.binpb: cannot read the contracts' descriptor set"],
        id="no-contracts",
    ),
]


@pytest.mark.parametrize(("change", "expected"), DISAGREEMENTS)
def test_each_disagreement_is_a_line_and_exit_1(
    tree: Path,
    change: Callable[[Path], None],
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    change(tree)
    found = lines(tree)
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), line
    assert main(["manifest", "check", "--root", str(tree)]) == 1
    printed = capsys.readouterr()
    assert printed.out.splitlines() == found
    assert printed.err.startswith(f"{len(found)} disagreement(s) in ")


def test_a_manifest_with_no_code_yet_is_held_to_nothing_else(tree: Path) -> None:
    write(tree, {"services/shop/main.py": None, "services/shop/service.py": None})
    # Only the missing main.py: its serves cannot be compared with code that is not there.
    assert lines(tree) == [f"{SHOP_FILE}: services/shop has no main.py: mesh up cannot start it"]


@pytest.mark.parametrize(
    "code",
    [
        "from hms.shop.v1 import shop_pb2_grpc\nclass A(shop_pb2_grpc.ShopServiceServicer): ...",
        "from hms.shop.v1 import shop_pb2_grpc as g\nclass A(g.ShopServiceServicer): ...",
        "from hms.shop.v1.shop_pb2_grpc import ShopServiceServicer\n"
        "class A(ShopServiceServicer): ...",
        "import hms.shop.v1.shop_pb2_grpc\n"
        "class A(hms.shop.v1.shop_pb2_grpc.ShopServiceServicer): ...",
        "import hms.shop.v1.shop_pb2_grpc as g\nclass A(object, g.ShopServiceServicer): ...",
    ],
)
def test_servicers_are_found_however_imported(tmp_path: Path, code: str) -> None:
    (tmp_path / "service.py").write_text(code + "\n")
    assert servicers_in_code(tmp_path, CONTRACTS) == {SHOP: f"{tmp_path / 'service.py'}: class A"}


@pytest.mark.parametrize(
    "code",
    [
        "class A(ShopServiceServicer): ...",  # not imported: not the generated one
        "from hms.shop.v1 import shop_pb2\nclass A(shop_pb2.ShopServiceServicer): ...",
        "from hms.shop.v1 import shop_pb2_grpc\nclass A(shop_pb2_grpc.ShopServiceStub): ...",
        "from hms.shop.v1 import shop_pb2_grpc\nclass A(shop_pb2_grpc.PostServiceServicer): ...",
        "from hms.shop.v1 import shop_pb2_grpc\nx = shop_pb2_grpc.ShopServiceServicer",
        "def broken(:\n",
    ],
)
def test_what_is_not_a_servicer(tmp_path: Path, code: str) -> None:
    (tmp_path / "service.py").write_text(code + "\n")
    assert servicers_in_code(tmp_path, CONTRACTS) == {}


def test_the_check_needs_a_services_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manifest", "check", "--root", str(tmp_path)]) == 2
    assert "has no services/ folder" in capsys.readouterr().err
