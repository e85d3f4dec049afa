"""X (Twitter) API v2 response pages, one per line as collectors write them:
`{"data": [tweets], "includes": {"media": [...], "users": [...]}}`.

Photos come from `attachments.media_keys` -> `includes.media[].url`; videos and GIFs have no
picture URL but a `preview_image_url`, used instead. The author is `author_id` ->
`includes.users[].username`. A long tweet's full text is in `note_tweet.text`. X escapes `&`, `<`
and `>` in the text as HTML entities; they are decoded. A retweet's own text is "RT @author: " and the
original's first words, without its pictures: when the page includes the original (`includes.tweets`, the
`referenced_tweets.id` expansion), the original is the post, as a Mastodon boost is (`reposted_by` keeps the
retweeter; many retweets of one tweet are one post).

A line may also be one tweet (`twarc2 flatten`, or a page's `data` saved a tweet per line): its expansions, if
any, are inline (`author`, `attachments.media`, `referenced_tweets[]` with the referenced tweets' fields), and it
is read as a page of that one tweet.
"""

from __future__ import annotations

from collections.abc import Iterator

from mmsa.readers.common import Skip, count, dedupe, unescape


def read(record: dict) -> Iterator[dict | Skip | str]:
    if "data" not in record and "id" in record and ("text" in record or "note_tweet" in record):  # one tweet
        record = _page_of(record)
    data = record.get("data")
    if isinstance(data, dict):  # a single-tweet lookup
        data = [data]
    if not isinstance(data, list):
        if "errors" in record:
            yield Skip("x-v2: error page")
            return
        if _empty(record):  # a search that found nothing: X leaves `data` out
            yield Skip("x-v2: empty page")
            return
        raise ValueError("unknown format: not an X API v2 page (no `data` list)")
    if not data:
        yield Skip("x-v2: empty page")
        return
    includes = record.get("includes") or {}
    media = {m.get("media_key"): m for m in includes.get("media") or [] if isinstance(m, dict)}
    users = {u.get("id"): u for u in includes.get("users") or [] if isinstance(u, dict)}
    tweets = {t.get("id"): t for t in includes.get("tweets") or [] if isinstance(t, dict)}
    for tweet in data:  # one bad tweet is rejected alone, the page's others still read
        if not isinstance(tweet, dict):
            yield "X API v2 page: a `data` item is not an object"
            continue
        try:
            original = tweets.get(_retweeted(tweet))
            if original is None:
                yield _tweet(tweet, media, users)
                continue
            retweeter = users.get(tweet.get("author_id")) or {}  # author_id is not a default field: may be absent
            by = retweeter.get("username") or tweet.get("author_id") or f"retweet {tweet.get('id')}"
            yield {**_tweet(original, media, users), "reposted_by": by}
        except (TypeError, ValueError, AttributeError) as exc:
            yield f"unparseable tweet {str(tweet.get('id'))[:40]}: {type(exc).__name__}: {exc}"


def _page_of(tweet: dict) -> dict:
    """A page of one flattened tweet, its inline expansions as the page's `includes`."""
    media, users, tweets = [], [], []
    for t in [tweet, *(r for r in tweet.get("referenced_tweets") or [] if isinstance(r, dict))]:
        media += [m for m in (t.get("attachments") or {}).get("media") or [] if isinstance(m, dict)]
        users += [t["author"]] if isinstance(t.get("author"), dict) else []
        tweets += [t] if t is not tweet and "created_at" in t else []  # a referenced tweet with its fields
    return {"data": [tweet], "includes": {"media": media, "users": users, "tweets": tweets}}


def _retweeted(tweet: dict) -> str | None:
    """The id of the tweet a retweet repeats (None for any other tweet: a quote or a reply has words of its own)."""
    for ref in tweet.get("referenced_tweets") or []:
        if isinstance(ref, dict) and ref.get("type") == "retweeted":
            return ref.get("id")
    return None


def _empty(record: dict) -> bool:
    """Whether a record is X's page of no results: `{"meta": {"result_count": 0}}`."""
    meta = record.get("meta")
    return isinstance(meta, dict) and meta.get("result_count") == 0


def _tweet(tweet: dict, media: dict, users: dict) -> dict:
    keys = (tweet.get("attachments") or {}).get("media_keys") or []
    urls = []
    for key in keys:
        m = media.get(key) or {}
        urls.append(m.get("url") if m.get("type") == "photo" else m.get("preview_image_url"))
    metrics = tweet.get("public_metrics") or {}
    note = (tweet.get("note_tweet") or {}).get("text")
    user = users.get(tweet.get("author_id")) or {}
    shares = [metrics.get(k) for k in ("retweet_count", "quote_count") if metrics.get(k) is not None]
    row = {
        "post_id": tweet.get("id"),
        "created_at": tweet.get("created_at"),
        "text": unescape(note or tweet.get("text")),
        "image_urls": dedupe([unescape(u) for u in urls]),
        "source": "x",
        "lang": tweet.get("lang"),
        "author": user.get("username") or tweet.get("author_id"),
        "likes": metrics.get("like_count"),
        "shares": _total(shares),
        "replies": metrics.get("reply_count"),
    }
    if tweet.get("conversation_id") not in (None, tweet.get("id")):
        row["conversation_id"] = tweet["conversation_id"]
    if None in urls:  # X leaves them out unless asked for (media.fields=url,preview_image_url): say so
        row["media_without_url"] = urls.count(None)
    return row


def _total(counts: list) -> int | str | None:
    """Retweets plus quotes; when one is no count, both as written, for validation to name ("3 + many")."""
    try:
        return sum(map(count, counts)) if counts else None
    except ValueError:
        return " + ".join(map(str, counts))
