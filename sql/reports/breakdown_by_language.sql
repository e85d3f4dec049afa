-- breakdown_by_language: per brand and language, the volume, its share of the brand's posts and the sentiment mix.
-- Answers: "does brand X land differently in different languages?"
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model version).
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- negative_share and net_sentiment are of the labelled posts: a post left unscored (unscored_reason: a language
-- its model does not cover) counts in posts, not in labelled.
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
counts AS (
    SELECT
        brand,
        lang,
        count(*)                             AS posts,
        count(brand_label)                         AS labelled,
        count(*) FILTER (brand_label = 'positive') AS positive,
        count(*) FILTER (brand_label = 'neutral')  AS neutral,
        count(*) FILTER (brand_label = 'negative') AS negative,
        avg(brand_p_positive - brand_p_negative)   AS mean_sentiment_score
    FROM posts
    GROUP BY brand, lang
)
SELECT
    brand,
    lang,
    posts,
    posts / sum(posts) OVER (PARTITION BY brand)            AS share_of_brand_posts,
    labelled,
    positive,
    neutral,
    negative,
    negative / nullif(labelled, 0)                          AS negative_share,
    (positive - negative) / nullif(positive + negative, 0)  AS net_sentiment,
    mean_sentiment_score
FROM counts
ORDER BY brand, posts DESC, lang;
