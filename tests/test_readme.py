"""The README's tables: every node of the extension and every shipped workflow has a row, and every
table renders (a header and its separator before the rows, no blank line inside)."""
import re
from pathlib import Path

from workflow_files import our_node_ids, ui_files

REPO = Path(__file__).resolve().parents[1]


def section(title_start: str) -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## " + title_start)
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def tables(text: str) -> list[list[str]]:
    """Runs of consecutive lines starting with '|'."""
    runs, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            runs.append(current)
            current = []
    return runs


def test_every_node_has_a_row_in_the_nodes_section():
    nodes = section("Nodes")
    rows = [line for table in tables(nodes) for line in table[2:]]
    listed = {key for row in rows for key in re.findall(r"\(`(LumiX\w+)`\)", row.split("|")[1])}
    assert our_node_ids() and our_node_ids() <= listed, f"no README row for {sorted(our_node_ids() - listed)}"


def test_every_table_has_its_header_and_rows_of_the_same_width():
    readme = (REPO / "README.md").read_text()
    all_tables = tables(readme)
    assert len(all_tables) >= 4
    for table in all_tables:
        assert len(table) >= 3, f"a table without rows or header: {table[0]}"
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", table[1]), f"no header separator under {table[0]}"
        widths = {line.count("|") - line.count("\\|") for line in table}
        assert len(widths) == 1, f"rows of different widths in the table under {table[0]}"


def test_every_shipped_workflow_has_a_row_in_the_workflows_section():
    listed = set(re.findall(r"^\| `([\w.]+\.json)` \|", section("Workflows"), re.M))
    shipped = {p.name for p in ui_files()}
    assert shipped and shipped == listed, f"README rows differ from workflows/: {sorted(shipped ^ listed)}"
