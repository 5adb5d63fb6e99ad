"""Every command block of README.md and docs/ runs as written, from a folder laid out as a fresh
clone after `make train` (.venv and data/), one page's blocks after another in one folder, so
that a block may use what an earlier one made (`refit` takes the newest sweep).

Each command gets small budgets appended (data limits, a sweep's trial count and time), the
keys it already names replaced: what runs is the block's command on less data, not another one.
A block whose first line is `# not run by the tests: REASON` is skipped: the test suite itself,
installs, servers, GPUs, clusters, a run stopped part-way by hand.
"""

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import write_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "# not run by the tests:"

# Appended to every training command: the data a command trains on, not how.
DATA_LIMITS = {"dataset.train_limit": "2000", "dataset.test_limit": "500",
               "trainer.progress": "false"}
# Appended to an Optuna search or its workers.
SEARCH_LIMITS = {"hydra.sweeper.n_trials": "2", "hydra.sweeper.timeout": "300"}

pytestmark = pytest.mark.slow


def bash_blocks(page: Path) -> list[str]:
    """The page's ```bash blocks, dedented, that the tests run."""
    blocks = re.findall(r"^( *)```bash\n(.*?)^\1```", page.read_text(), re.S | re.M)
    bodies = [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]
    return [body for body in bodies if not body.startswith(SKIP)]


def commands(block: str) -> list[str]:
    """A block's commands: continued lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in (re.sub(r"(^|\s)#\s.*$", "", raw).strip()
                              for raw in joined.splitlines()) if line]


def with_budgets(command: str, postgres_url: str | None) -> str:
    """The command with small budgets appended, replacing the values it gives those keys."""
    limits: dict[str, str] = {}
    if re.search(r"-m mlp_sweep\.(train|workers)\b", command):
        limits |= DATA_LIMITS
        if "hparams_search=" in command or "mlp_sweep.workers" in command:
            limits |= SEARCH_LIMITS
    if "-m mlp_sweep.refit" in command:
        command = re.sub(r"\s--seeds[ =]\d+", "", command) + " --seeds 1"
    for key in limits:
        command = re.sub(rf"\s{re.escape(key)}=\S+", "", command)
    if postgres_url:
        command = re.sub(r"postgresql://[^\s'\"]+", postgres_url, command)
    return " ".join([command, *(f"{key}={value}" for key, value in limits.items())])


def fresh_database(server_url: str) -> str:
    """A new database on the tests' PostgreSQL server, so that the page's study names are free."""
    import psycopg

    name = f"docs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


def lay_out_a_clone(folder: Path, mnist_root: Path) -> None:
    """`folder` as a clone after `make train`: .venv, and data/ with MNIST as a first run leaves
    it (the tests' own copy, read-only here). Fashion-MNIST, which torchvision cannot download
    offline, is small files in its real format, read through torchvision as a download leaves
    them."""
    (folder / ".venv").symlink_to(ROOT / ".venv")
    (folder / "data" / "prepared").mkdir(parents=True)
    (folder / "data" / "MNIST").symlink_to(mnist_root / "MNIST")
    for cached in (mnist_root / "prepared").glob("mnist-*.pt"):
        (folder / "data" / "prepared" / cached.name).symlink_to(cached)
    write_fashion_mnist(folder / "data", 2000, 500, learnable=True)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_have_command_blocks():
    assert bash_blocks(ROOT / "README.md"), "README.md shows no command it runs"
    for page in PAGES:
        text = page.read_text()
        for body in re.findall(r"```bash\n(.*?)```", text, re.S):
            first = body.lstrip().splitlines()[0] if body.strip() else ""
            if first.startswith("#") and "not run" in first:
                assert first.startswith(SKIP), f"{page_id(page)}: a skip reads {SKIP!r} REASON"


@pytest.mark.parametrize("page", [p for p in PAGES if bash_blocks(p)], ids=page_id)
def test_every_command_block_runs_as_written(page, tmp_path, mnist_root, request):
    uses_postgres = "postgresql://" in "".join(bash_blocks(page))
    postgres_url = fresh_database(request.getfixturevalue("postgres_url")) \
        if uses_postgres else None
    lay_out_a_clone(tmp_path, mnist_root)
    for block in bash_blocks(page):
        for command in commands(block):
            run = with_budgets(command, postgres_url)
            result = subprocess.run(["bash", "-c", run], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=900)
            assert result.returncode == 0, (f"{page_id(page)}: {command}\nran: {run}\n"
                                            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
