"""`jax-sft bench --generate` rewrites only its own section of docs/benchmarks.md."""

from jax_sft.bench.generation import BEGIN, END, write_docs


def test_the_figures_are_replaced_and_the_analysis_kept(tmp_path):
    page = tmp_path / "benchmarks.md"
    write_docs(page, "| old |\n")
    assert page.read_text().count(BEGIN) == 1
    page.write_text(page.read_text() + "\nWhere the time goes: weights.\n")
    write_docs(page, "| new |\n")
    text = page.read_text()
    assert "| new |" in text and "| old |" not in text
    assert text.count(BEGIN) == text.count(END) == 1
    assert text.endswith("Where the time goes: weights.\n")


def test_two_commands_keep_their_own_sections_of_one_page(tmp_path):
    page = tmp_path / "pruning.md"
    page.write_text("# Pruning\n\nHand-written text.\n")
    write_docs(page, "| generate |\n")
    write_docs(page, "| pruned 1 |\n", command="bench --generate --pruned")
    write_docs(page, "| pruned 2 |\n", command="bench --generate --pruned")
    text = page.read_text()
    assert "Hand-written text." in text and "| generate |" in text
    assert "| pruned 2 |" in text and "| pruned 1 |" not in text
    assert text.count("bench --generate --pruned: begin") == 1
