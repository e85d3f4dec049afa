-- posts: the posts behind a day, a week or any filter, most engaging first, with every prediction.
-- Answers: "which posts make up this bar?" and, with $opposite, "where do text and image disagree?"
-- brand_label / brand_p_*: toward the row's brand (a post without a brand: its own fused label).
-- engagement = likes + shares + replies (a missing count counts 0); link = the post's own address
-- when the dump carried one as `url`, `permalink` or `link` (kept in extra).
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC), $source, $lang,
--   $model_version (required: the version the dashboard resolved), $label (the label toward the brand),
--   $opposite (true = only posts whose text and image labels are positive vs negative),
--   $limit posts (default 50).
-- Dates are compared with created_at, not the view's day, so DuckDB skips the row groups of other days.
SELECT
    post_id,
    created_at,
    brand,
    source,
    lang,
    author,
    text,
    coalesce(json_extract_string(extra, '$.url'), json_extract_string(extra, '$.permalink'),
             json_extract_string(extra, '$.link'))                       AS link,
    image_urls[1]                                                       AS image_url,
    image_status,
    unscored_reason,
    brand_label,
    brand_p_positive,
    brand_p_neutral,
    brand_p_negative,
    label,
    p_positive,
    p_neutral,
    p_negative,
    text_label,
    text_p_positive,
    text_p_neutral,
    text_p_negative,
    image_label,
    image_p_positive,
    image_p_neutral,
    image_p_negative,
    likes,
    shares,
    replies,
    coalesce(likes, 0) + coalesce(shares, 0) + coalesce(replies, 0)     AS engagement
FROM post_sentiment
WHERE model_version = $model_version
  AND ($brand IS NULL OR brand = $brand)
  AND ($source IS NULL OR source = $source)
  AND ($lang IS NULL OR lang = $lang)
  AND ($label IS NULL OR brand_label = $label)
  AND ($date_from IS NULL OR created_at >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR created_at < CAST($date_to AS DATE) + 1)
  AND (NOT coalesce(CAST($opposite AS BOOLEAN), false)
       OR (text_label IN ('positive', 'negative') AND image_label IN ('positive', 'negative') AND text_label <> image_label))
ORDER BY engagement DESC, post_id
LIMIT coalesce(CAST($limit AS INTEGER), 50);
