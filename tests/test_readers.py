"""Platform readers, field mappings, brand rules, times, compression and many-file dumps (no model, no network)."""

import gzip
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import zstandard

from mmsa import readers, source
from mmsa.brands import BrandTagger
from mmsa.cli import build_parser
from mmsa.readers import Skip, bluesky, flat, mastodon, reddit, x_v2


def _one(read, record):
    (row,) = list(read(record))
    return row


def test_x_page_links_photos_video_previews_and_authors():
    page = {
        "data": [
            {"id": "1", "text": "Fish &amp; chips &lt;3", "created_at": "2026-11-20T10:00:00.000Z", "lang": "en",
             "author_id": "u1", "attachments": {"media_keys": ["3_a", "7_v", "3_a"]},
             "public_metrics": {"like_count": 5, "retweet_count": 2, "quote_count": 1, "reply_count": 3}},
            {"id": "2", "text": "short", "note_tweet": {"text": "the long version"}, "created_at": "2026-11-20T11:00:00Z",
             "author_id": "u9"},
        ],
        "includes": {"media": [{"media_key": "3_a", "type": "photo", "url": "https://pbs.twimg.com/media/a.jpg"},
                               {"media_key": "7_v", "type": "video", "preview_image_url": "https://pbs.twimg.com/v.jpg"}],
                     "users": [{"id": "u1", "username": "alice"}]},
    }
    first, second = list(x_v2.read(page))
    assert first["text"] == "Fish & chips <3"
    assert first["image_urls"] == ["https://pbs.twimg.com/media/a.jpg", "https://pbs.twimg.com/v.jpg"]
    assert (first["author"], first["likes"], first["shares"], first["replies"]) == ("alice", 5, 3, 3)
    assert (second["text"], second["author"], second["image_urls"]) == ("the long version", "u9", [])
    assert "media_without_url" not in first
    # a photo collected without media.fields=url has no URL: the post says so (in extra), not only "no image"
    bare = {"data": [{**page["data"][0], "attachments": {"media_keys": ["3_b"]}}],
            "includes": {"media": [{"media_key": "3_b", "type": "photo"}]}}
    assert (_one(x_v2.read, bare)["image_urls"], _one(x_v2.read, bare)["media_without_url"]) == ([], 1)
    assert list(x_v2.read({"errors": [{"title": "Not Found"}]})) == [Skip("x-v2: error page")]
    assert list(x_v2.read({"meta": {"result_count": 0}})) == [Skip("x-v2: empty page")]  # a search that found nothing
    with pytest.raises(ValueError, match="unknown format: not an X API v2 page"):
        list(x_v2.read({"includes": {}}))


def test_x_tweets_one_per_line_as_twarc2_flatten_writes_them():
    """`twarc2 flatten`, the common X v2 collection format: a tweet per line, its expansions inline. Every line was
    rejected "missing post_id"."""
    photo = {"media_key": "3_a", "type": "photo", "url": "https://pbs.twimg.com/media/a.jpg"}
    original = {"id": "9", "text": "acme &amp; co rock", "created_at": "2026-11-20T09:00:00.000Z", "author_id": "u2",
                "author": {"id": "u2", "username": "bob"}, "attachments": {"media_keys": ["3_a"], "media": [photo]}}
    tweets = [
        {"id": "1", "text": "hi &amp; bye", "created_at": "2026-11-20T10:00:00.000Z", "author_id": "u1", "lang": "en",
         "edit_history_tweet_ids": ["1"], "author": {"id": "u1", "username": "alice"},
         "attachments": {"media_keys": ["3_a"], "media": [photo]}, "__twarc": {"version": "2.14.0"}},
        {"id": "2", "text": "RT @bob: acme &amp; co", "created_at": "2026-11-20T11:00:00.000Z", "author_id": "u1",
         "author": {"id": "u1", "username": "alice"}, "referenced_tweets": [{"type": "retweeted", **original}],
         "__twarc": {"version": "2.14.0"}},
        {"id": "3", "text": "a bare tweet", "created_at": "2026-11-20T12:00:00.000Z", "author_id": "u3"},
    ]
    assert [readers.detect(t) for t in tweets] == ["x-v2"] * 3
    first, retweet, bare = (_one(readers.auto, t) for t in tweets)
    assert (first["post_id"], first["text"], first["author"], first["image_urls"]) == (
        "1", "hi & bye", "alice", ["https://pbs.twimg.com/media/a.jpg"])
    assert (retweet["post_id"], retweet["text"], retweet["author"], retweet["reposted_by"]) == ("9", "acme & co rock", "bob", "alice")
    assert retweet["image_urls"] == ["https://pbs.twimg.com/media/a.jpg"]
    assert (bare["post_id"], bare["author"], bare["image_urls"]) == ("3", "u3", [])


def test_reddit_gallery_order_escapes_previews_and_comments():
    gallery = {
        "id": "g1", "created_utc": "1763632800", "title": "Haul &amp; more", "selftext": "[removed]", "score": -4,
        "num_comments": 7, "is_gallery": True,
        "media_metadata": {"b": {"status": "valid", "s": {"u": "https://preview.redd.it/b.jpg?w=1&amp;s=2"}},
                           "a": {"status": "valid", "s": {"u": "https://preview.redd.it/a.jpg?w=1&amp;s=1"}},
                           "x": {"status": "failed"}},
        "gallery_data": {"items": [{"media_id": "a"}, {"media_id": "x"}, {"media_id": "b"}]},
    }
    row = _one(reddit.read, gallery)
    assert row["post_id"] == "t3_g1" and row["text"] == "Haul & more"
    assert row["image_urls"] == ["https://preview.redd.it/a.jpg?w=1&s=1", "https://preview.redd.it/b.jpg?w=1&s=2"]
    assert (row["likes"], row["replies"], row["score"]) == (0, 7, -4)
    linked = {"id": "l1", "created_utc": 1763632800, "title": "pic", "selftext": "body", "url": "https://i.redd.it/p.png",
              "preview": {"images": [{"source": {"url": "https://preview.redd.it/p.png?auto=webp&amp;s=9"}}]}}
    row = _one(reddit.read, linked)
    assert row["image_urls"] == ["https://i.redd.it/p.png"]  # its preview is the same picture
    assert row["text"] == "pic\n\nbody"
    article = {**linked, "url": "https://news.example/story", "post_hint": "link"}
    assert _one(reddit.read, article)["image_urls"] == ["https://preview.redd.it/p.png?auto=webp&s=9"]
    comment = _one(reddit.read, {"id": "c1", "body": "acme &amp; co are great&#x200B;", "created_utc": 1, "score": 3,
                                 "link_id": "t3_g1", "parent_id": "t3_g1", "subreddit": "gadgets"})
    assert (comment["post_id"], comment["text"], comment["likes"], comment["parent_id"]) == (
        "t1_c1", "acme & co are great\u200b", 3, "t3_g1")  # an RC_ dump scored, not skipped whole
    notices = {"title": "[deleted by user]", "selftext": "[ Removed by reddit on account of violating the "
               "[content policy](/help/contentpolicy). ]"}
    assert list(reddit.read({"id": "r1", "created_utc": 1, **notices})) == [Skip("reddit: removed or deleted")]
    assert list(reddit.read({"id": "c2", "created_utc": 1, "body": "[ Removed by Reddit ]"})) == [
        Skip("reddit: removed or deleted")]
    for blank in ("&amp;#x200B;", "\u200b\n\n&amp;#x200B;"):  # the editor's blank lines alone: no words, no post
        assert list(reddit.read({"id": "c3", "created_utc": 1, "body": blank})) == [Skip("reddit: removed or deleted")]
    kept = _one(reddit.read, {"id": "r2", "created_utc": 1, "title": "acme leaked manual",
                              "selftext": "[ Removed by reddit in response to a copyright notice. ]"})
    assert kept["text"] == "acme leaked manual"  # the notice is no one's words: it read as negative
    for title in ("[Deleted scene] from Alien [1979]", "[deleted] lol [edit]"):  # words, not a notice
        assert _one(reddit.read, {"id": "r3", "created_utc": 1, "title": title, "selftext": "[removed]"})["text"] == title
    with pytest.raises(ValueError, match="unknown format: not a Reddit submission"):
        list(reddit.read({"id": "q", "created_utc": 1}))


def test_reddit_markdown_is_read_as_the_words_reddit_shows():
    body = ("**Love** my new [Acme phone](https://acme.example/p)! ~~not~~ \\_really\\_\n\n"
            "&gt; they said it would break\n\n* battery: great\n* camera: meh\n\n"
            "    indented by habit\n\ncut&amp;paste &lt;3 &amp;#x200B; ![the box](https://i.example/b.png)")
    text = _one(reddit.read, {"id": "m1", "created_utc": 1, "title": "**Acme** review", "selftext": body})["text"]
    assert text == ("**Acme** review\n\nLove my new Acme phone! not _really_\n\nthey said it would break\n\n"
                    "battery: great\n\ncamera: meh\n\nindented by habit\n\ncut&paste <3 \u200b the box")  # a title is not markdown
    for body, shown in (("2024. What a year for acme", "2024. What a year for acme"), ("1986) was great", "1986) was great"),
                        ("> " * 200 + "deep", "> " * 199 + "> deep"), ("1.\n\nacme rocks", "acme rocks")):  # its number kept; nested past the limit: as written
        assert _one(reddit.read, {"id": "m2", "created_utc": 1, "body": body})["text"] == shown.strip()


def test_jetstream_posts_images_and_skipped_events(monkeypatch):
    monkeypatch.delenv("MMSA_BLUESKY_CDN", raising=False)
    monkeypatch.delenv("MMSA_BLUESKY_VIDEO_CDN", raising=False)
    post = {"did": "did:plc:abc", "time_us": 1763632800123456, "kind": "commit",
            "commit": {"collection": "app.bsky.feed.post", "operation": "create", "rkey": "3k",
                       "record": {"text": "hello", "langs": ["de"],
                                  "embed": {"$type": "app.bsky.embed.recordWithMedia",
                                            "media": {"$type": "app.bsky.embed.images",
                                                      "images": [{"image": {"ref": {"$link": "bafy1"}}, "alt": ""},
                                                                 {"image": {"cid": "bafy2"}}]}}}}}
    row = _one(bluesky.read, post)
    assert row["post_id"] == "at://did:plc:abc/app.bsky.feed.post/3k"
    assert row["created_at"] == 1763632800123456 and row["lang"] == ["de"]  # no createdAt: the event's time
    # several langs (the poster's settings, often): the text's language when it is one of them, else the first
    for langs, text, lang in ((["ja", "en"], "the acme phone is great, I love the camera", "en"),
                              (["ja", "en-US"], "the acme phone is great, I love the camera", "en"),
                              (["ja", "en"], "das Telefon ist wirklich großartig", "ja"), (["de"], "hello there friends", "de")):
        assert source.validate({"post_id": "p", "created_at": 0, "text": text, "lang": langs})["lang"] == lang, langs
    assert row["image_urls"] == ["https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:abc/bafy1@jpeg",
                                 "https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:abc/bafy2@jpeg"]
    video = {"$type": "app.bsky.embed.video", "alt": "unboxing",
             "video": {"$type": "blob", "ref": {"$link": "bafv1"}, "mimeType": "video/mp4", "size": 1000}}
    for embed in (video, {"$type": "app.bsky.embed.recordWithMedia", "media": video}):  # its poster frame, as X's
        post["commit"]["record"]["embed"] = embed
        assert _one(bluesky.read, post)["image_urls"] == ["https://video.bsky.app/watch/did%3Aplc%3Aabc/bafv1/thumbnail.jpg"]
    like = {"did": "d", "kind": "commit", "commit": {"collection": "app.bsky.feed.like", "operation": "create"}}
    delete = {"did": "d", "kind": "commit", "commit": {"collection": "app.bsky.feed.post", "operation": "delete"}}
    assert [next(bluesky.read(r)) for r in (like, delete, {"did": "d", "kind": "identity"})] == [
        Skip("bluesky: like"), Skip("bluesky: post delete"), Skip("bluesky: identity event")]


def test_mastodon_html_boosts_and_media_types(tmp_path):
    original = {"id": "9", "uri": "https://mstdn.example/users/bob/statuses/9", "created_at": "2026-11-20T10:00:00.000Z",
                "content": '<p>Hi <a href="https://x" class="mention">@<span>acmecorp</span></a> &amp; co</p><p>line<br>two '
                           '<a href="https://example.com/a/long/path"><span class="invisible">https://</span>'
                           '<span class="ellipsis">example.com/a/lo</span><span class="invisible">ng/path</span></a></p>',
                "language": "en", "account": {"acct": "bob@mstdn.example"}, "favourites_count": 4, "reblogs_count": 1,
                "replies_count": 0,
                "media_attachments": [{"type": "image", "url": "https://files.example/1.png"},
                                      {"type": "gifv", "url": "https://files.example/2.mp4", "preview_url": "https://files.example/2.png"},
                                      {"type": "audio", "url": "https://files.example/3.mp3"},
                                      # a remote server's media this one did not fetch: the original's own URL
                                      {"type": "unknown", "url": None, "remote_url": "https://far.example/4.jpg"}]}
    row = _one(mastodon.read, original)
    assert row["text"] == "Hi @acmecorp & co\nline\ntwo example.com/a/lo"
    assert row["image_urls"] == ["https://files.example/1.png", "https://files.example/2.png", "https://far.example/4.jpg"]
    assert (row["post_id"], row["author"], row["likes"], row["shares"]) == (original["uri"], "bob@mstdn.example", 4, 1)
    boost = {"id": "10", "created_at": "2026-11-21T00:00:00Z", "content": "", "account": {"acct": "carol"}, "reblog": original}
    boosted = _one(mastodon.read, boost)
    assert boosted["post_id"] == original["uri"] and boosted["reposted_by"] == "carol" and boosted["author"] == "bob@mstdn.example"
    # a boost whose account says no handle is a repost all the same: skipped as such, not a duplicate post rejected
    anonymous = _one(mastodon.read, {**boost, "uri": "https://mstdn.example/statuses/10/activity", "account": {"id": "7"}})
    assert anonymous["reposted_by"] == "boost https://mstdn.example/statuses/10/activity"
    dump = tmp_path / "statuses.jsonl"
    dump.write_text(_lines([original, {**boost, "account": {"id": "7"}}]))
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="mastodon"))
    assert (shard.posts.num_rows, shard.rejected, dict(shard.skipped)) == (1, [], {"repost of a post already read": 1})


def test_mastodon_content_warning_leads_the_text_and_a_local_author_gets_the_server():
    """A content warning is the status's subject line (often where the brand is named); `acct` of an account local
    to the server asked lacks the server, so alice of two servers would be one author."""
    status = {"uri": "https://social.example/users/alice/statuses/1", "created_at": "2026-11-20T10:00:00Z",
              "spoiler_text": "acme customer service rant", "sensitive": True,
              "content": "<p>Three hours on hold and they hung up on me.</p>",
              "account": {"acct": "alice", "url": "https://social.example/@alice"}}
    row = _one(mastodon.read, status)
    assert row["text"] == "acme customer service rant\n\nThree hours on hold and they hung up on me."
    assert row["author"] == "alice@social.example"
    remote = _one(mastodon.read, {**status, "account": {"acct": "bob@other.example", "url": "https://other.example/@bob"}})
    assert remote["author"] == "bob@other.example"


def test_a_retweet_is_its_original_once_and_a_crosspost_shows_its_originals_gallery(tmp_path):
    """An X retweet's own text is a cut "RT @author: ..." without the pictures: the page's included original is the
    post, and the original met again (or another retweet of it) is the same post, skipped, not rejected.
    A Reddit crosspost of a gallery holds the pictures in its parent only; the editor's escaped `&#x200B;` goes."""
    long = "I have been using the acme phone for two days and it is the best phone I have owned"
    original = {"id": "1", "text": long[:40], "note_tweet": {"text": long}, "created_at": "2026-11-20T10:00:00Z",
                "author_id": "u1", "attachments": {"media_keys": ["3_a"]}}
    retweet = {"id": "2", "text": f"RT @fan: {long[:60]}", "created_at": "2026-11-20T11:00:00Z", "author_id": "u2",
               "referenced_tweets": [{"type": "retweeted", "id": "1"}]}
    includes = {"tweets": [original], "media": [{"media_key": "3_a", "type": "photo", "url": "https://pbs.twimg.com/a.jpg"}],
                "users": [{"id": "u1", "username": "fan"}, {"id": "u2", "username": "hater"}]}
    dump = tmp_path / "x.jsonl"
    dump.write_text(_lines([{"data": [retweet, {**retweet, "id": "3"}], "includes": includes},
                            {"data": [original], "includes": includes}]))
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="x-v2"))
    (post,) = shard.posts.to_pylist()
    assert (post["post_id"], post["author"], post["text"], post["image_urls"]) == ("1", "fan", long, ["https://pbs.twimg.com/a.jpg"])
    assert json.loads(post["extra"])["reposted_by"] == "hater"
    assert shard.rejected == [] and shard.skipped == {"repost of a post already read": 2}
    anonymous = [{k: v for k, v in t.items() if k != "author_id"} for t in (retweet, {**retweet, "id": "3"})]
    dump.write_text(_lines([{"data": anonymous, "includes": includes}]))  # author_id is no default field of X's
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="x-v2"))
    assert shard.posts["post_id"].to_pylist() == ["1"] and shard.rejected == [] and sum(shard.skipped.values()) == 1
    gallery = {"gallery_data": {"items": [{"media_id": "m2"}, {"media_id": "m1"}]},
               "media_metadata": {m: {"status": "valid", "s": {"u": f"https://i.redd.it/{m}.jpg"}} for m in ("m1", "m2")}}
    crosspost = {"id": "x1", "title": "look at this", "selftext": "so cut&amp;copy good&amp;#x200B;", "created_utc": 1763632800,
                 "url_overridden_by_dest": "https://www.reddit.com/gallery/g1", "crosspost_parent": "t3_g1",
                 "crosspost_parent_list": [{"id": "g1", "title": "my acme haul", "is_gallery": True, **gallery}]}
    row = _one(reddit.read, crosspost)
    assert row["image_urls"] == ["https://i.redd.it/m2.jpg", "https://i.redd.it/m1.jpg"]
    assert row["text"] == "look at this\n\nso cut&copy good\u200b"  # whole entities only: "&copy" is words


def test_detection_by_shape_and_every_reader_named_on_the_command_line():
    assert readers.detect({"post_id": 1}) == "flat"
    assert readers.detect({"data": [], "includes": {}}) == "x-v2"
    assert readers.detect({"errors": [{"title": "Not Found Error"}]}) == "x-v2"  # skipped as an error page, not rejected
    assert readers.detect({"meta": {"result_count": 0}}) == "x-v2"  # skipped as an empty page
    assert readers.detect({"errors": "x", "post_id": "p"}) == "flat"
    assert readers.detect({"did": "d", "kind": "commit"}) == "bluesky-jetstream"
    assert readers.detect({"id": "a", "subreddit": "pics"}) == "reddit"
    assert readers.detect({"id": "1", "content": "<p>x</p>", "account": {}}) == "mastodon"
    assert readers.detect({"id": "1", "body": "?"}) == "flat"
    score = build_parser()._subparsers._group_actions[0].choices["score"]
    assert [a.choices for a in score._actions if a.dest == "source_format"] == [readers.FORMATS]  # the CLI offers them all
    assert set(readers.FORMATS) == {name for name in readers.FORMATS if readers.reader(name)}
    with pytest.raises(ValueError, match="unknown source format 'tiktok'"):
        readers.reader("tiktok")


def test_field_mapping_paths():
    mapping = flat.parse_mapping({"post_id": "id", "text": "full_text", "image_urls": "media[].url", "author": "user.name",
                                  "likes": "stats[0]"})
    media = [{"url": "u1"}, {"kind": "x"}, {"url": "u2"}]
    row = _one(flat.mapped(mapping), {"id": 7, "full_text": "hi", "media": media, "user": {"name": "al"},
                                      "stats": [3, 4], "created_at": "2026-11-20", "kept": 1})
    # what a path took leaves the record, and only that: a list a path ran through stays whole
    assert row == {"post_id": 7, "text": "hi", "image_urls": ["u1", "u2"], "author": "al", "likes": 3,
                   "created_at": "2026-11-20", "kept": 1, "media": media, "stats": [3, 4]}
    nested = _one(flat.mapped(mapping), {"id": 9, "full_text": "x", "created_at": "2026-11-20",
                                         "user": {"name": "al", "followers": 5, "place": {"city": "Oslo"}}})
    assert nested["user"] == {"followers": 5, "place": {"city": "Oslo"}}  # the whole `user` was dropped
    # a CSV flattened from JSON names its columns by their paths: mapped as written, not lost to `extra`
    flattened = _one(flat.mapped(mapping), {"id": 8, "full_text": "yo", "user.name": "Zoë", "created_at": "2026-11-20"})
    assert (flattened["author"], "user.name" in flattened) == ("Zoë", False)
    with pytest.raises(ValueError, match="cannot map onto colour"):
        flat.parse_mapping({"colour": "c"})


def test_brand_rules_match_words_tags_handles_and_regexes_ignoring_case():
    tagger = BrandTagger({"acme": {"keywords": ["acme", "acme corp"], "hashtags": ["#acme"], "handles": ["@acmecorp"],
                                   "regexes": [r"\bacme ?(one|pro)\b"]},
                          "globex": {"keywords": ["Globex"]}})
    cases = {"ACME rocks": ["acme"], "acmes and acmecorp": [], "#AcmeForever": [], "love #ACME!": ["acme"],
             "hi @AcmeCorp": ["acme"], "my acmepro": ["acme"], "globex vs acme": ["acme", "globex"],
             "GLOBEX.": ["globex"], "": [], None: []}
    assert {text: tagger.tag(text) for text in cases} == cases
    with pytest.raises(ValueError, match="bad regex"):
        BrandTagger({"x": {"regexes": ["("]}})
    with pytest.raises(ValueError, match="keys from"):
        BrandTagger({"x": {"words": ["x"]}})


def test_brand_rules_ignore_accents_full_width_letters_and_the_kind_of_apostrophe():
    """What phones and other keyboards type: a curly apostrophe, accents composed or not, full-width letters; the
    span found is the post's own characters."""
    tagger = BrandTagger({"o'brien": {"keywords": ["o'brien bikes"]}, "Café Zürich": {"keywords": ["café zürich"]},
                          "acme": {"hashtags": ["#acmé"]}})
    cases = {"O\u2019Brien bikes rock": "O\u2019Brien bikes", "Cafe\u0301 Zu\u0308rich is nice": "Cafe\u0301 Zu\u0308rich",
             "cafe zurich": "cafe zurich", "ＣＡＦＥ zurich": "ＣＡＦＥ zurich", "love #ACME": "#ACME"}
    for text, span in cases.items():
        (brand,) = tagger.tag(text)
        assert [text[a:b] for a, b in tagger.spans(text, brand)] == [span], text
    assert tagger.tag("pineapple o'briens") == []


def test_brand_rules_fold_letters_without_accents_of_their_own_and_marks_after_a_name():
    """Ø, Ł, Đ, Æ, ß are written without their strokes as accented letters are (NFKD leaves them be); an acute
    accent or a backtick typed for the apostrophe is one; ™ after a name ends it (NFKD spells it "TM")."""
    tagger = BrandTagger({"orsted": {"keywords": ["ørsted"]}, "lodz": {"keywords": ["Łódź"]}, "straße": {"keywords": ["straße"]},
                          "aero": {"keywords": ["Ærø"]}, "mcd": {"keywords": ["mcdonald's"]}, "acme": {"keywords": ["acme"]}})
    cases = {"Orsted wind farm": "Orsted", "ØRSTED shares": "ØRSTED", "Lodz trams": "Lodz", "STRASSE fest": "STRASSE",
             "Aero ferry": "Aero", "McDonald\u00b4s fries": "McDonald\u00b4s", "McDonald`s fries": "McDonald`s",
             "McDonald\u02bbs fries": "McDonald\u02bbs", "Acme\u2122 support is awful": "Acme", "ACME\u2120 rocks": "ACME"}
    for text, span in cases.items():
        assert len(tagger.tag(text)) == 1, text
        (brand,) = tagger.tag(text)
        assert [text[a:b] for a, b in tagger.spans(text, brand)] == [span], text
    assert tagger.tag("acmeTM") == []


def test_a_brand_touching_an_unspaced_script_is_found_and_inside_a_latin_word_is_not():
    """Han, kana, Hangul particles, Thai, Lao, Khmer and Myanmar join words without a space: a name beside them is whole."""
    tagger = BrandTagger({"acme": {"keywords": ["acme"], "handles": ["@acmecorp"]}, "任天堂": {"keywords": ["任天堂"]}})
    cases = {"acmeのスマホは最悪です": "acme", "我很喜欢acme手机": "acme", "acme는 최고예요": "acme", "ＡＣＭＥのスマホ": "ＡＣＭＥ",
             "ฉันชอบacmeมาก": "acme", "ຂ້ອຍມັກacmeຫຼາຍ": "acme", "ខ្ញុំចូលចិត្តacmeណាស់": "acme", "ကျွန်တော်acmeကိုကြိုက်တယ်": "acme",
             "@acmecorpのサポート": "@acmecorp", "任天堂のゲーム": "任天堂"}
    for text, span in cases.items():
        (brand,) = tagger.tag(text)
        assert [text[a:b] for a, b in tagger.spans(text, brand)] == [span], text
    assert [tagger.tag(t) for t in ("acmes", "xacme", "acme2", "@acmecorpx")] == [[]] * 4
    # a Hangul name is whole syllables (기아 is not in 기안, "draft") and kana keep their voicing (カメラ, not ガメラ)
    names = BrandTagger({"기아": {"keywords": ["기아"]}, "カメラ": {"keywords": ["カメラ"]}})
    assert [names.tag(t) for t in ("기아는 최고", "기안을 작성했다", "ガメラ", "カメラが好き")] == [["기아"], [], [], ["カメラ"]]


def test_a_brand_the_dump_gives_takes_the_files_spelling_and_counts_once():
    """A dump's "brand": "ACME" for a post the rules tag acme is one brand, acme, not two; without a file, two
    spellings of one name are one brand too."""
    row = {"post_id": "p", "created_at": 0, "text": "acme again", "brand": "ACME", "brands": ["Initech", "initech"]}
    post = source.validate(row, tagger=BrandTagger({"acme": {"keywords": ["acme"]}}))
    assert post["brands"] == ["Initech", "acme"]
    assert source.validate({**row, "brand": "Acme", "brands": ["acme"]})["brands"] == ["acme"]
    assert source.validate({**row, "brand": "Cafe Zurich", "brands": ["Café Zürich"]})["brands"] == ["Café Zürich"]
    assert source.validate({**row, "brand": "Acme", "brands": ["Acme\u2122", "ACME \u2122"]})["brands"] == ["Acme\u2122"]
    assert BrandTagger({"acme": {"keywords": ["acme"]}}).canonical("Acme\u2122") == "acme"


def test_whole_numbers_in_export_types_are_counts_and_ids():
    """12.0 (pandas writes an int column with gaps as floats), 1e3 and a Decimal (a warehouse's NUMBER(38, 0)) are
    counts; a Decimal id is an id; a float id is refused as such (64-bit ids lose digits as floats)."""
    row = {"post_id": "p", "created_at": 0, "text": "x"}
    post = source.validate({**row, "likes": "12.0", "shares": Decimal("5"), "replies": "1e3"})
    assert (post["likes"], post["shares"], post["replies"]) == (12, 5, 1000)
    post = source.validate({**row, "likes": "1,234", "shares": "12\u202f345\u202f678", "replies": "1'234"})
    assert (post["likes"], post["shares"], post["replies"]) == (1234, 12345678, 1234)  # a formatted cell: not rejected
    assert source.validate({**row, "likes": "5.000"})["likes"] == 5  # three decimals, not thousands
    assert source.validate({**row, "likes": "1.234.567"})["likes"] == 1234567  # no decimals: thousands
    assert source.validate({**row, "post_id": Decimal("123456789012345678")})["post_id"] == "123456789012345678"
    for count in ("12.5", "nan", "1e999999999", Decimal("2.5"), "1,23", "1,234.567", "1,234.5"):
        with pytest.raises(ValueError, match="likes is not a count"):
            source.validate({**row, "likes": count})
    with pytest.raises(ValueError, match="post_id is a floating-point number"):
        source.validate({**row, "post_id": 123.0})


@pytest.mark.parametrize("value, expected", [
    ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00+00:00"),
    ("2026-11-20T12:00:00+02:00", "2026-11-20T10:00:00+00:00"),
    ("2026-11-20T05:00:00-0500", "2026-11-20T10:00:00+00:00"),
    ("2026-11-20 10:00:00", "2026-11-20T10:00:00+00:00"),
    (1763632800, "2025-11-20T10:00:00+00:00"),
    (1763632800.5, "2025-11-20T10:00:00.500000+00:00"),
    ("1763632800", "2025-11-20T10:00:00+00:00"),
    (1763632800123, "2025-11-20T10:00:00.123000+00:00"),
    ("1763632800123456", "2025-11-20T10:00:00.123456+00:00"),
    ("20261120", "2026-11-20T00:00:00+00:00"),  # ISO-8601's basic form, not 1970-08-23 in epoch seconds
    (20261120, "2026-11-20T00:00:00+00:00"),
    (20261120.0, "2026-11-20T00:00:00+00:00"),  # pandas' float column of days (it had a gap)
    ("20261120.0", "2026-11-20T00:00:00+00:00"),
    (45981.5, "2025-11-20T12:00:00+00:00"),  # a spreadsheet's serial day, not 12:46 on 1 January 1970
    ("45981", "2025-11-20T00:00:00+00:00"),
])
def test_times_iso_and_epoch_to_utc(value, expected):
    assert source.parse_time(value).isoformat() == expected


def test_bad_times_are_rejected_with_their_reason():
    for bad in ("yesterday", True, 10**20, [1], "12345678"):
        with pytest.raises(ValueError, match="created_at is not ISO-8601 or an epoch time"):
            source.validate({"post_id": "p", "created_at": bad, "text": "x"})


def _zst(path, text, window_log=None):
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log, enable_ldm=True) if window_log else None
    compressor = zstandard.ZstdCompressor(compression_params=params) if params else zstandard.ZstdCompressor()
    with path.open("wb") as fh, compressor.stream_writer(fh) as writer:
        writer.write(text.encode())
    return path


def _lines(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_compressed_folders_globs_and_overlapping_files_are_one_dump(tmp_path, caplog):
    """gz and zst (a 2 GiB window, as Reddit's dumps declare), files in name order, a post in two files once;
    every record accounted for exactly once: a post, a rejected row, or a skipped non-post."""
    posts = [{"id": f"s{n}", "created_utc": 1763632800 + n, "title": f"post {n} about acme"} for n in range(6)]
    comment = {"id": "c1", "body": "[deleted]", "created_utc": 1763632800}
    folder = tmp_path / "dumps"
    folder.mkdir()
    _zst(folder / "RS_2026-10.zst", _lines(posts[:4] + [comment]), window_log=31)
    with gzip.open(folder / "RS_2026-11.jsonl.gz", "wt") as fh:
        fh.write(_lines(posts[3:] + [{"id": "bad", "title": "no time"}]))
    (folder / "notes.txt").write_text("not a dump")
    with pytest.raises(zstandard.ZstdError):  # the decoder's default limit refuses such a window
        zstandard.ZstdDecompressor().stream_reader((folder / "RS_2026-10.zst").open("rb")).read()
    options = source.ReadOptions(source_format="reddit", brand_rules={"acme": {"keywords": ["acme"]}})
    for dump in (folder, str(folder / "RS_2026-1*")):
        with caplog.at_level("WARNING", logger="mmsa.source"):
            files = source.resolve(dump, tmp_path / "dl")
        assert [f.name for f in files] == ["RS_2026-10.zst", "RS_2026-11.jsonl.gz"]
        shards = list(source.iter_shards(files, 4, options=options))
        got = [p for s in shards for p in s.posts.to_pylist()]
        rejected = [r for s in shards for r in s.rejected]
        skipped = sum((s.skipped for s in shards), start=type(shards[0].skipped)())
        assert [p["post_id"] for p in got] == [f"t3_s{n}" for n in range(6)]
        assert all(p["brands"] == ["acme"] for p in got)
        assert got[0]["created_at"] == datetime(2025, 11, 20, 10, tzinfo=timezone.utc)
        assert [(r["reason"], r["file"], r["line"]) for r in rejected] == [
            ("duplicate post_id (first seen at RS_2026-10.zst line 4)", "RS_2026-11.jsonl.gz", 1),
            ("missing created_at", "RS_2026-11.jsonl.gz", 4)]
        assert dict(skipped) == {"reddit: removed or deleted": 1}
        assert len(got) + len(rejected) + sum(skipped.values()) == 4 + 1 + 3 + 1
    # the folder's notes file is not read, and said so (posts saved as .txt were left out without a word)
    assert [r.getMessage() for r in caplog.records] == [f"{folder}: 1 file(s) of no dump format (JSONL, CSV, Parquet) not read: notes.txt"]
    files_key = source.files_key(files)
    other = source.ReadOptions(source_format="reddit")
    assert source.content_key(files_key, options) != source.content_key(files_key, other)  # brands change the posts


def test_image_cap_brand_field_and_mapping_in_validation(tmp_path):
    row = {"post_id": "p", "created_at": 0, "text": "globex", "brand": "acme",
           "image_urls": [f"https://i.example/{n}.jpg" for n in range(6)], "image_url": "https://i.example/0.jpg"}
    post = source.validate(row, max_images=4, tagger=BrandTagger({"globex": {"keywords": ["globex"]}}))
    assert post["image_urls"] == [f"https://i.example/{n}.jpg" for n in range(4)]
    assert post["brands"] == ["acme", "globex"]
    assert json.loads(post["extra"]) == {"images_dropped": 2}
    with pytest.raises(ValueError, match="nothing to score"):
        source.validate({"post_id": "p", "created_at": 0, "image_urls": [" "]})
    # one CSV cell of several URLs (listening tools, twarc-csv) is several images, not one broken URL
    a, b, c = "https://i.example/a.jpg", "http://i.example/w_100,h_80/b.jpg", "https://i.example/c.png"
    cells = [f"{a}, {b}", f"{a};{b} | {c}", f"{a} {b}\n{c}", json.dumps([a, b]), f"{a},{a}", "/data/my images/a.jpg",
             str([a, c])]  # the last as pandas writes a list column to CSV
    got = [source.validate({"post_id": "p", "created_at": 0, "image_urls": cell})["image_urls"] for cell in cells]
    assert got == [[a, b], [a, b, c], [a, b, c], [a, b], [a], ["/data/my images/a.jpg"], [a, c]]
    # a value that is no URL string stays, for the fetch stage to call invalid_url: it was dropped (read as no_image)
    odd = source.validate({"post_id": "p", "created_at": 0, "image_url": 12345, "image_urls": [{"u": 1}, None, ""]})
    assert odd["image_urls"] == ['{"u": 1}', "12345"]
    for missing in (float("nan"), False):  # pandas' empty cell (NaN in its JSON), a false flag: no image, not a URL
        assert source.validate({"post_id": "p", "created_at": 0, "text": "hi", "image_url": missing})["image_urls"] == []
    assert source.validate({"post_id": "p", "created_at": 0, "text": "hi", "brands": str(["acme", "Globex"])})["brands"] == [
        "acme", "Globex"]
    with pytest.raises(ValueError, match="--map applies to the flat format"):
        source.ReadOptions.build("reddit", {"text": "body"})
    brands = tmp_path / "brands.json"
    brands.write_text(json.dumps({"acme": {"hashtags": ["#acme"]}}))
    assert source.ReadOptions.build(brands=brands).brand_rules == {"acme": {"hashtags": ["#acme"]}}
    brands.write_text("acme: [unclosed")
    with pytest.raises(ValueError) as bad:
        source.ReadOptions.build(brands=brands)
    assert str(bad.value) == (f"brands file {brands}: not YAML or JSON: expected ',' or ']', but got '<stream end>' "
                              "(line 1, column 16)")  # one line, saying where
    brands.write_text("acme:\n  keywords: [acme]\nglobex:\n  keywords: [globex]\nacme:\n  keywords: [acme corp]\n")
    with pytest.raises(ValueError, match="acme given twice \\(again on line 5\\)"):  # would keep only its last rules
        source.ReadOptions.build(brands=brands)
    brands.write_text("NFL:\n  keywords: [nfl]\nBeyoncé:\n  keywords: [beyoncé]\nbeyonce:\n  hashtags: ['#beyonce']\n")
    with pytest.raises(ValueError, match="brands 'Beyoncé' and 'beyonce' are one name"):  # the second vanished from posts
        source.ReadOptions.build(brands=brands)
    brands.write_text("acme:\n  keywords: [acme]\n? [globex, initech]\n: {keywords: [globex]}\n")
    with pytest.raises(ValueError, match="a key that is not a name \\(line 3\\)"):  # was a TypeError's traceback
        source.ReadOptions.build(brands=brands)
    brands.write_text("on:\n  keywords: [on running]\n1800:\n  keywords: [1800 flowers]\n")  # not True and 1800
    rules = source.ReadOptions.build(brands=brands).brand_rules
    assert list(rules) == ["on", "1800"]
    tagger = BrandTagger(rules)
    assert source.validate({"post_id": "p", "created_at": 0, "text": "On Running, 1800 Flowers"}, tagger=tagger)[
        "brands"] == ["on", "1800"]


def test_records_a_reader_cannot_read_are_rejected_with_the_reason_and_the_rest_goes_on(tmp_path):
    dump = tmp_path / "mixed.jsonl"
    dump.write_text(_lines([
        {"did": "d", "time_us": 1763632800000000, "kind": "commit",
         "commit": {"collection": "app.bsky.feed.post", "operation": "create", "rkey": "a", "record": {"text": "ok"}}},
        {"did": "d", "time_us": 1},  # no kind
        {"did": "d", "kind": "commit", "commit": "not an object"},
        {"did": "d", "kind": "commit", "commit": {"collection": "app.bsky.feed.post", "operation": "create", "rkey": "b",
                                                 "record": {"text": "x", "embed": {"$type": "app.bsky.embed.images",
                                                                                   "images": "nope"}}}},
    ]))
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="bluesky-jetstream"))
    assert shard.posts["post_id"].to_pylist() == ["at://d/app.bsky.feed.post/a"]
    reasons = [r["reason"] for r in shard.rejected]
    assert reasons[0] == "unknown format: not a Jetstream event (no kind)"
    assert reasons[1] == "Jetstream commit event without a `commit` object"
    assert reasons[2].startswith("unparseable record: AttributeError")
    assert [r["line"] for r in shard.rejected] == [2, 3, 4]


def test_one_bad_tweet_of_an_x_page_is_rejected_alone_and_a_long_csv_field_is_read(tmp_path):
    """An X page with a non-object in `data` and a tweet whose counts mix strings and numbers: the bad item is
    one rejection, every other tweet of the page is read (counts given as numeric strings summed). A CSV text
    longer than the csv module's default field limit (128 KiB) is read, as the same text in JSONL is; a row with
    more fields than its header is rejected whole, at the line it starts on."""
    tweet = {"id": "x1", "created_at": "2026-11-20T10:00:00.000Z", "text": "acme"}
    page = {"data": [tweet, "oops", {**tweet, "id": "x2", "public_metrics": {"retweet_count": "3", "quote_count": 1}},
                     {**tweet, "id": "x3", "public_metrics": {"retweet_count": "many"}}]}
    dump = tmp_path / "page.jsonl"
    dump.write_text(_lines([page]))
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="x-v2"))
    assert shard.posts["post_id"].to_pylist() == ["x1", "x2"] and shard.posts["shares"].to_pylist() == [None, 4]
    assert [r["reason"] for r in shard.rejected][1] == "shares is not a count (a whole number from 0 to 10^15): 'many'"
    # counts as every other reader's: thousands separators read, fractions and negatives named, not cut or summed
    tweets = [{**tweet, "id": f"y{n}", "public_metrics": {"retweet_count": r, "quote_count": q}}
              for n, (r, q) in enumerate([("1,234", 2), (1.7, None), (-5, 2)])]
    dump.write_text(_lines([{"data": tweets}]))
    (shard,) = source.iter_shards(dump, 10, options=source.ReadOptions(source_format="x-v2"))
    assert shard.posts["shares"].to_pylist() == [1236]
    assert [r["reason"].split(": ")[-1] for r in shard.rejected] == ["'1.7'", "'-5 + 2'"]
    long = tmp_path / "long.csv"
    long.write_text(f"post_id,created_at,text\nc1,2026-11-20,{'a' * 200_000}\nc2,2026-11-20,\"two\nlines\"\n"
                    "c3,2026-11-20,an unquoted, comma\n")
    (shard,) = source.iter_shards(long, 10)
    assert shard.posts["post_id"].to_pylist() == ["c1", "c2"]
    assert [(r["reason"], r["raw"], r["line"]) for r in shard.rejected] == [  # not a text cut at the comma, and
        ("CSV row has 4 fields, its header 3", "c3,2026-11-20,an unquoted, comma", 5)]  # the file's line, not row 4


def test_a_file_that_breaks_off_keeps_its_records_and_the_next_file_is_read(tmp_path):
    rng = __import__("random").Random(0)  # text that does not compress away, so half a file holds whole records
    posts = [{"post_id": f"p{n}", "created_at": 1763632800, "text": "".join(rng.choices("abcdefgh ", k=300))}
             for n in range(2000)]  # 128 KB zstd blocks: several of them, so the first half of the file decodes
    whole = zstandard.ZstdCompressor(level=1).compress(_lines(posts[:1500]).encode())
    (tmp_path / "a.jsonl.zst").write_bytes(whole[: len(whole) // 2])  # a download cut in the middle
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_lines(posts[1500:]).encode())[:-12])  # its trailer lost
    (tmp_path / "c.jsonl").write_text(_lines([{"post_id": "last", "created_at": 0, "text": "read"}]))
    (shard,) = source.iter_shards(source.resolve(tmp_path, tmp_path / "dl"), 5000)
    ids = shard.posts["post_id"].to_pylist()
    reasons = [(r["file"], r["reason"]) for r in shard.rejected]
    assert ids[0] == "p0" and ids[-1] == "last" and 500 < ids.index("p1500") < 1500
    assert [f for f, reason in reasons if reason.startswith("unreadable file from here")] == ["a.jsonl.zst", "b.jsonl.gz"]
    assert all(reason.startswith("invalid JSON") for _, reason in reasons if not reason.startswith("unreadable"))
