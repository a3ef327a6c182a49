import re

from hypothesis import given, strategies as st

from craft.data.titles import create_filename, generate_title_hash, normalize_title, strip_hash, title_matches_filename


def test_examples():
    assert normalize_title("New Topic") == "new_topic"
    assert normalize_title("os.path — Common (pathname) ops!") == "ospath__common_pathname_ops"
    name = create_filename("New Topic")
    assert re.fullmatch(r"new_topic_[0-9a-f]{6}", name)
    # fixed hash: sha256("New Topic")[:6], the same on every machine and run
    assert generate_title_hash("New Topic") == "cd2fe4"


@given(st.text(max_size=40))
def test_round_trips(title):
    name = create_filename(title)
    assert strip_hash(name) == normalize_title(title)
    assert title_matches_filename(title, name) and title_matches_filename(title, name + ".md")
    assert re.fullmatch(r"[a-z0-9_]*", normalize_title(title))


def test_hash_distinguishes_titles_that_normalize_alike():
    assert normalize_title("New Topic") == normalize_title("new topic")
    assert create_filename("New Topic") != create_filename("new topic")
    assert not title_matches_filename("new topic", create_filename("New Topic"))
