"""The chat report, built from hand-made evaluation files (no training)."""

from speedrun.apps.chat_report import row_label, task_table, write_chat_report
from speedrun.rundir import ChatRunDir


def result(accuracies: dict, score: float) -> dict:
    constant = {"addition": 0.02, "addition_no_tool": 0.02, "counting": 0.34}
    return {"score": score, "tasks": {
        row: {"accuracy": acc, "total": 100, "constant": constant[row], "constant_reply": "x",
              "examples": [{"question": f"q {row}", "reply": "r", "expected": "e", "correct": acc > 0.5}]}
        for row, acc in accuracies.items()}}


BEFORE = result({"addition": 0.0, "addition_no_tool": 0.0, "counting": 0.1}, -0.2)
AFTER = result({"addition": 1.0, "addition_no_tool": 0.05, "counting": 0.9}, 0.9)


def test_rows_say_whether_the_calculator_was_there():
    assert row_label("addition") == "addition (calculator)"
    assert row_label("addition_no_tool") == "addition (no tool)"
    assert row_label("counting") == "counting"


def test_task_table_puts_each_task_beside_its_baselines():
    table = task_table(BEFORE, AFTER)
    assert "| counting | 100 | 34.0% | 10.0% | 90.0% |" in table
    assert "| addition (no tool) | 100 | 2.0% | 0.0% | 5.0% |" in table
    assert table.splitlines()[-1] == "| **score** (centred on the constant answer) | | 0 | -0.200 | 0.900 |"
    assert "| counting | 100 | 34.0% | - | 90.0% |" in task_table(None, AFTER)  # before the base was evaluated


def test_report_from_a_folder_with_only_evaluations(tmp_path):
    folder = ChatRunDir(tmp_path / "chat")
    folder.path.mkdir()
    folder.write_state({"stages": {"eval_base": {"seconds": 2.0}, "eval_sft": {"seconds": 3.0}}})
    folder.write_eval(ChatRunDir.BASE, BEFORE)
    folder.write_eval(ChatRunDir.SFT, AFTER)
    report = write_chat_report(folder.path).read_text()
    assert "| **total** | **5.0** (0.1 min) |" in report
    assert "| counting | 100 | 34.0% | 10.0% | 90.0% |" in report
    assert "**counting** (right): 'q counting'" in report
    assert (folder.path / "task_accuracy.png").stat().st_size > 0
    assert "## Training" not in report  # no finished runs in the folder
