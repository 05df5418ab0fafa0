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
