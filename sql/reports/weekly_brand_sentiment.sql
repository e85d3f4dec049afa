-- weekly_brand_sentiment: per brand and ISO week (Monday start), the volume and the sentiment mix.
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- Answers: "how does brand X's sentiment trend week by week, without the day-to-day noise?"
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC; a week cut
--   by them counts only its days inside), $model_version (NULL = the most recently used model).
-- net_sentiment = (positive - negative) / (positive + negative); NULL for a week with neither.
-- Shares and net sentiment are of the labelled posts: a post left unscored (unscored_reason: a language
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
        CAST(date_trunc('week', day) AS DATE) AS week,
        count(DISTINCT day)                   AS days_with_posts,
        count(*)                              AS posts,
        count(brand_label)                          AS labelled,
        count(*) FILTER (brand_label = 'positive')  AS positive,
        count(*) FILTER (brand_label = 'neutral')   AS neutral,
        count(*) FILTER (brand_label = 'negative')  AS negative,
        avg(brand_p_positive - brand_p_negative) AS mean_sentiment_score
    FROM posts
    GROUP BY ALL
)
SELECT
    brand,
    week,
    days_with_posts,
    posts,
    labelled,
    positive,
    neutral,
    negative,
    positive / nullif(labelled, 0)                              AS positive_share,
    neutral / nullif(labelled, 0)                               AS neutral_share,
    negative / nullif(labelled, 0)                              AS negative_share,
    (positive - negative) / nullif(positive + negative, 0)      AS net_sentiment,
    mean_sentiment_score
FROM counts
ORDER BY brand, week;
