"""ic.csv tables without quotes or ragged rows are read without pandas (`parse.plain_table`); every
table that path accepts must come out exactly as pandas reads it (names, cells, no notes)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_manager.artifacts.parse import _pandas_table, parse_ic, plain_table

CELLS = st.sampled_from(["", " ", "  0.1", "0.1 ", "-0.02", "1e-3", "nan", "NaN", "null", "inf", "-", "x", "ofi_1m",
                         "Unnamed: 1", "factor", "Kendall_Tau", "ü", "\t", "a b", "\x0b", "1,5", '"q"', "0x1"])


@st.composite
def tables(draw) -> str:
    """A CSV text: usually rectangular and plain, sometimes ragged, quoted, with blank or CR lines."""
    width = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(CELLS, min_size=width, max_size=width), min_size=1, max_size=6))
    if draw(st.booleans()):  # a ragged row
        rows.append(draw(st.lists(CELLS, min_size=1, max_size=7)))
    end = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\n \n"]))
    text = end.join(",".join(row) for row in rows)
    return draw(st.sampled_from(["", "\n", "\r\n"])) + text + draw(st.sampled_from(["", "\n", end]))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_tables_read_without_pandas_are_read_as_pandas_reads_them(text):
    plain = plain_table(text)
    if plain is None:
        return
    names, values, notes = _pandas_table(text, "ic.csv")
    assert plain == ([str(n) for n in names], [list(row) for row in values]) and notes == []
    assert all(isinstance(cell, str) for row in values for cell in row)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("ab1.-e ,\n\r\"\t\ufeffü")), min_size=1, max_size=60))
def test_any_text_the_plain_reader_takes_reads_the_same(text):
    plain = plain_table(text)
    if plain is None:
        return
    names, values, notes = _pandas_table(text, "ic.csv")
    assert plain == ([str(n) for n in names], [list(row) for row in values]) and notes == []


def test_the_usual_tables_take_the_plain_path():
    for text in ("factor,ic,rank_ic,kendall_tau\nofi_1m,0.1,0.2,0.05\nspread_bps,nan,,-0.02\n",
                 ",ic,rank_ic,kendall_tau\r\nofi_1m,0.1,0.2,0.05\r\n\r\nspread_bps,,,-0.02\r\n",
                 "Name, ic , rank_ic, KENDALL_TAU\n ofi_1m , 0.1, 0.2, 0.05\nspread_bps, inf, null, -0.02\n"):
        assert plain_table(text) is not None
        ic, notes = parse_ic(text.encode())
        assert ic["columns"][1:] == ["ic", "rank_ic", "kendall_tau"] and notes == []
        assert ic["rows"][0] == ["ofi_1m", 0.1, 0.2, 0.05] and ic["rows"][1][0] == "spread_bps"
    assert plain_table('"factor","ic"\n"a","1"\n') is None  # quoted: pandas reads it


def test_a_warning_about_some_other_objects_file_is_not_a_note_on_the_table():
    """The garbage collector may find another object's unclosed file while pandas reads a table; the
    ResourceWarning it raises then is not about the table."""
    import gc
    import warnings

    def collecting(phase, info):
        if phase == "start":
            warnings.warn("unclosed file <_io.BufferedRandom name='elsewhere.log'>", ResourceWarning, stacklevel=1)

    threshold = gc.get_threshold()
    gc.callbacks.append(collecting)
    gc.set_threshold(1)  # a collection every few allocations: several while pandas reads
    try:
        names, values, notes = _pandas_table('"factor","ic"\n"ofi_1m","0.1"\n', "ic.csv")
    finally:
        gc.callbacks.remove(collecting)
        gc.set_threshold(*threshold)
    assert names == ["factor", "ic"] and [list(r) for r in values] == [["ofi_1m", "0.1"]]
    assert notes == []


def test_tables_read_in_two_threads_at_once_leave_the_warnings_machinery_as_it_was():
    """Registrations parse groups in several threads. Recording the warnings of one table read must
    not leave another read's recorder installed for the rest of the process."""
    import threading
    import warnings

    from model_manager.warned import recorded_warnings

    shown, filters = warnings._showwarnmsg_impl, list(warnings.filters)
    inside, second_waiting, first_done = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, list[str]] = {}

    def first() -> None:
        with recorded_warnings() as messages:
            inside.set()
            second_waiting.wait(5)
            threading.Event().wait(0.5)  # the second thread is now starting its own block
            warnings.warn("first", UserWarning, stacklevel=1)
        first_done.set()
        got["first"] = messages

    def second() -> None:
        inside.wait(5)
        second_waiting.set()
        with recorded_warnings() as messages:  # ends after the first block ended
            first_done.wait(5)
            warnings.warn("second", UserWarning, stacklevel=1)
        got["second"] = messages

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert got == {"first": ["first"], "second": ["second"]}
    assert warnings._showwarnmsg_impl is shown and warnings.filters == filters
    _, _, notes = _pandas_table("factor,ic\nofi_1m,0.1,9\n", "ic.csv")  # a read's warnings are still its notes
    assert notes and all(note.startswith("ic.csv: ") for note in notes)


def test_a_warning_another_thread_raises_meanwhile_is_not_a_note():
    import threading
    import warnings

    import pytest

    from model_manager.warned import recorded_warnings

    with pytest.warns(UserWarning, match="elsewhere"), recorded_warnings() as messages:  # shown as ever
        other = threading.Thread(target=lambda: warnings.warn("elsewhere", UserWarning, stacklevel=1))
        other.start()
        other.join()
        warnings.warn("here", UserWarning, stacklevel=1)
    assert messages == ["here"]
