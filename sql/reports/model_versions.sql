-- model_versions: data quality: the posts each model version has scored, and which version the other reports use.
-- Answers: "which model do these numbers come from, and does it cover the whole history?"
-- posts counts each post once, whatever its number of brands.
-- The other reports read one model version at a time (never two scorings of one post): the
-- most recently used one (is_default) unless --param model_version=... picks another.
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC, of the posts),
--   $model_version.
SELECT
    model_version,
    model_version = (SELECT model_version FROM latest_model_version)   AS is_default,
    count(DISTINCT post_id)         AS posts,  -- post_sentiment has a row per brand of a post
    count(DISTINCT brand)           AS brands,
    min(day)                        AS first_day,
    max(day)                        AS last_day,
    count(DISTINCT run_id)          AS runs,
    max(scored_at)                  AS last_scored_at
FROM post_sentiment
WHERE ($model_version IS NULL OR model_version = $model_version)
  AND ($brand IS NULL OR brand = $brand)
  AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
GROUP BY model_version
ORDER BY last_scored_at DESC;
