-- period_over_period: per brand, the current period against the equally long period just before it.
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- Answers: "how did brand X move this week compared with last week?"
-- Parameters: $brand (NULL = every brand), $model_version (NULL = the most recently used model),
--   $date_to   last day of the current period (NULL = the latest day with posts),
--   $date_from first day of the current period (NULL = $date_to - 6: a 7-day week).
-- *_change columns are current minus previous; posts_change_pct is NULL when the previous period had no posts.
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
),
current_period AS (
    SELECT coalesce(CAST($date_to AS DATE), (SELECT max(day) FROM posts)) AS period_to
),
periods AS (
    SELECT
        period_from,
        period_to,
        period_from - CAST(period_to - period_from + 1 AS INTEGER) AS previous_from,
        period_from - 1                             AS previous_to
    FROM (SELECT coalesce(CAST($date_from AS DATE), period_to - 6) AS period_from, period_to FROM current_period)
),
per_period AS (
    SELECT
        brand,
        day >= period_from                                    AS is_current,
        count(*)                                              AS posts,
        count(*) FILTER (brand_label = 'negative') / nullif(count(brand_label), 0) AS negative_share,  -- of the labelled posts
        (count(*) FILTER (brand_label = 'positive') - count(*) FILTER (brand_label = 'negative'))
            / nullif(count(*) FILTER (brand_label IN ('positive', 'negative')), 0) AS net_sentiment,
        avg(brand_p_positive - brand_p_negative) AS mean_sentiment_score
    FROM posts, periods
    WHERE day BETWEEN previous_from AND period_to
    GROUP BY ALL
),
cur AS (SELECT * FROM per_period WHERE is_current),
prev AS (SELECT * FROM per_period WHERE NOT is_current)
SELECT
    coalesce(cur.brand, prev.brand)                                 AS brand,
    period_from,
    period_to,
    previous_from,
    previous_to,
    coalesce(cur.posts, 0)                                          AS posts,
    coalesce(prev.posts, 0)                                         AS previous_posts,
    coalesce(cur.posts, 0) - coalesce(prev.posts, 0)                AS posts_change,
    (coalesce(cur.posts, 0) - prev.posts) / prev.posts              AS posts_change_pct,
    cur.net_sentiment,
    prev.net_sentiment                                              AS previous_net_sentiment,
    cur.net_sentiment - prev.net_sentiment                          AS net_sentiment_change,
    cur.negative_share,
    prev.negative_share                                             AS previous_negative_share,
    cur.negative_share - prev.negative_share                        AS negative_share_change,
    cur.mean_sentiment_score,
    prev.mean_sentiment_score                                       AS previous_mean_sentiment_score,
    cur.mean_sentiment_score - prev.mean_sentiment_score            AS mean_sentiment_score_change
FROM cur FULL JOIN prev ON cur.brand IS NOT DISTINCT FROM prev.brand CROSS JOIN periods
ORDER BY brand;
