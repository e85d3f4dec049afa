-- unscored_posts: data quality: per brand, the posts stored without a label, by reason and language.
-- A post in a language its model does not cover (unscored_reason 'unsupported_language'; the model's
-- config.json lists what it covers) is stored with every prediction NULL and left out of every share and
-- net sentiment; it still counts in volumes (posts, mentions, share of voice).
-- So is a post of images only none of which could be fetched and decoded ('no_text_and_no_usable_image').
-- Answers: "how much of what is said about brand X do the sentiment figures not read, and in which languages?"
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model version).
WITH posts AS (
    SELECT brand, lang, unscored_reason, day
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
per_brand AS (
    SELECT brand, count(*) AS brand_posts FROM posts GROUP BY brand
)
SELECT
    p.brand,
    unscored_reason,
    lang,
    count(*)                        AS posts,
    count(*) / any_value(brand_posts) AS share_of_brand_posts,
    min(day)                        AS first_day,
    max(day)                        AS last_day
FROM posts p JOIN per_brand b ON p.brand IS NOT DISTINCT FROM b.brand  -- untagged posts (brand NULL) too
WHERE unscored_reason IS NOT NULL
GROUP BY p.brand, unscored_reason, lang
ORDER BY p.brand, posts DESC, lang;
