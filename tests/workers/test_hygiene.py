"""Hygiene: exact and near-duplicates (MinHash), conflicting answers, train/validation leakage, drop lists."""

from typing import Any

from workers.analysis.hygiene import add_previews, find_issues, normalize, prompt_and_answer

FOX = (
    "The quick brown fox jumps over the lazy dog while the farmer sleeps under the old oak tree "
    "and the hens count their eggs in the warm barn at the end of a long summer day"
)
# One word changed in 32: about 86% of the word 3-grams are shared.
FOX_NEAR = FOX.replace("farmer", "miller")
OTHER = (
    "A crow found a piece of cheese and flew to a branch where a hungry fox praised her voice until she "
    "opened her beak to sing and dropped her dinner to the ground below"
)


def texts(*values: str) -> list[dict[str, Any]]:
    return [{"text": v} for v in values]


def test_normalize_ignores_case_spacing_and_unicode_variants_but_keeps_punctuation() -> None:
    assert normalize("  Hello,   WORLD!\n") == normalize("hello , world !") == "hello , world !"
    assert normalize("ﬁne café") == normalize("FINE café")
    assert normalize("return a+b") == "return a + b" != normalize("return a-b")


def test_exact_duplicates_differ_only_in_spacing() -> None:
    records = texts("Hello, world!", OTHER, "Hello,  world!\n", "hello world", "HELLO, WORLD!")
    result = find_issues(records, threshold=0.8)
    assert result["exact_duplicates"] == [[0, 2]]
    assert result["drop"]["exact_duplicates"] == [2]
    assert result["counts"]["exact_duplicate_groups"] == 1 and result["counts"]["exact_duplicates"] == 1


def test_code_that_differs_in_an_operator_is_no_duplicate() -> None:
    records = texts("def f(a, b):\n    return a+b", "def f(a, b):\n    return a-b", "x = [1, 2, 3]", "x = [1, 2, 4]")
    result = find_issues(records, threshold=0.8)
    assert result["exact_duplicates"] == [] and result["near_duplicates"] == []
    assert all(not v for v in result["drop"].values())


def test_minhash_finds_a_near_duplicate_and_not_a_distinct_record() -> None:
    result = find_issues(texts(FOX, OTHER, FOX_NEAR), threshold=0.7)
    assert [g["indices"] for g in result["near_duplicates"]] == [[0, 2]]
    assert 0.7 <= result["near_duplicates"][0]["similarity"] < 1.0
    assert result["drop"]["near_duplicates"] == [2]
    # A stricter threshold than their similarity: not near-duplicates any more.
    assert find_issues(texts(FOX, OTHER, FOX_NEAR), threshold=0.97)["near_duplicates"] == []


def test_a_near_duplicate_takes_its_exact_copies_with_it() -> None:
    result = find_issues(texts(FOX, FOX_NEAR, FOX_NEAR.replace(" ", "  ")), threshold=0.7)
    assert result["exact_duplicates"] == [[1, 2]]
    assert [g["indices"] for g in result["near_duplicates"]] == [[0, 1]]
    assert result["drop"]["near_duplicates"] == [1, 2]


def test_same_prompt_with_conflicting_answers() -> None:
    records = [
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"prompt": "Capital of  France?\n", "completion": "Lyon"},  # the same prompt: only spacing differs
        {"prompt": "Capital of France?", "completion": " Paris"},  # the same answer
        {"prompt": "Capital of Spain?", "completion": "Madrid"},
        {"prompt": "capital of france", "completion": "Berlin"},  # another prompt: case and punctuation count
    ]
    result = find_issues(records, threshold=0.8)
    assert result["conflicting_answers"] == [{"indices": [0, 1, 2], "answers": 2}]
    assert result["drop"]["conflicting_answers"] == [0, 1, 2]


def test_prompts_that_differ_in_an_operator_do_not_conflict() -> None:
    records = [{"prompt": "Compute 2+3", "completion": "5"}, {"prompt": "Compute 2*3", "completion": "6"}]
    assert find_issues(records, threshold=0.8)["conflicting_answers"] == []


def test_conversations_compare_their_last_answer() -> None:
    def convo(question: str, answer: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    result = find_issues([convo("2+2?", "4"), convo("2+2?", "5"), convo("3+3?", "6")], threshold=0.8)
    assert [c["indices"] for c in result["conflicting_answers"]] == [[0, 1]]
    assert prompt_and_answer({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert prompt_and_answer({"text": "t", "label": 3}) == ("t", "3")


def test_leakage_between_train_and_validation() -> None:
    train = texts(FOX, OTHER, "hello world", "Hello world!")
    validation = texts("Something else entirely, about nothing in particular.", "Hello  world!", FOX_NEAR)
    result = find_issues(train, threshold=0.7, validation=validation)
    leaks = {leak["validation_index"]: leak for leak in result["leakage"]}
    assert set(leaks) == {1, 2}
    assert leaks[1]["indices"] == [3] and leaks[1]["exact"] is True and leaks[1]["similarity"] == 1.0
    assert leaks[2]["indices"] == [0] and leaks[2]["exact"] is False and leaks[2]["similarity"] >= 0.7
    assert leaks[1]["validation_preview"] == "Hello world!"
    assert result["drop"]["leakage"] == [0, 3]
    assert result["counts"]["validation_records"] == 3 and result["counts"]["leaked_validation_records"] == 2


def test_previews_cover_every_listed_index() -> None:
    records = texts(FOX, "x " * 200, FOX, OTHER)
    result = find_issues(records, threshold=0.8)
    add_previews(result, iter(records))
    assert set(result["previews"]) == {"0", "2"}
    assert result["previews"]["0"].startswith("The quick brown fox") and result["previews"]["0"].endswith("…")
    assert len(result["previews"]["0"]) == 160


def test_a_clean_dataset_has_nothing_to_drop() -> None:
    result = find_issues(texts(FOX, OTHER, "hello world"), threshold=0.8)
    assert all(not v for v in result["drop"].values())
    assert result["counts"]["records"] == 3


def test_conversations_that_call_different_tools_are_no_duplicates() -> None:
    def calling(name: str) -> dict[str, Any]:
        call = {"type": "function", "function": {"name": name, "arguments": "{}"}}
        answer = {"role": "assistant", "content": "", "tool_calls": [call]}
        return {"messages": [{"role": "user", "content": "Help me."}, answer]}

    result = find_issues([calling("get_weather"), calling("get_time"), calling("get_weather")], threshold=0.8)
    assert result["exact_duplicates"] == [[0, 2]]  # the same call twice is a duplicate; another call is not
    # One prompt answered with two different calls: a conflict, as two different texts would be.
    assert result["conflicting_answers"] == [{"indices": [0, 1, 2], "answers": 2}]
