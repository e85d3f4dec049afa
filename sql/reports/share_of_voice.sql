-- share_of_voice: each brand's share of all mentions, and of the positive and negative ones, over a period.
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- Answers: "who owns the conversation between these brands, and who owns the praise?"
-- A post that mentions several brands is a mention of each (once); untagged posts are brand NULL: their row
-- counts them, and no share has them in its denominator (they are no brand's voice).
-- Parameters (NULL = no filter): $brand (shares stay relative to ALL brands), $date_from,
--   $date_to (inclusive days, UTC), $model_version (NULL = the most recently used model).
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
per_brand AS (
    SELECT
        brand,
        count(*)                             AS mentions,
        count(*) FILTER (brand_label = 'positive') AS positive_mentions,
        count(*) FILTER (brand_label = 'negative') AS negative_mentions
    FROM posts
    GROUP BY brand
)
SELECT
    brand,
    mentions,
    CASE WHEN brand IS NOT NULL THEN mentions
        / sum(mentions) FILTER (brand IS NOT NULL) OVER () END                     AS share_of_voice,
    positive_mentions,
    CASE WHEN brand IS NOT NULL THEN positive_mentions
        / nullif(sum(positive_mentions) FILTER (brand IS NOT NULL) OVER (), 0) END AS positive_share_of_voice,
    negative_mentions,
    CASE WHEN brand IS NOT NULL THEN negative_mentions
        / nullif(sum(negative_mentions) FILTER (brand IS NOT NULL) OVER (), 0) END AS negative_share_of_voice
FROM per_brand
QUALIFY $brand IS NULL OR brand = $brand
ORDER BY mentions DESC, brand;
