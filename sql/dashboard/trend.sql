-- trend: per brand and day or ISO week, the volume and the sentiment counts behind net sentiment.
-- Labels are the sentiment toward the brand (brand_label: a post that names two brands can praise one and pan
-- the other); a post without a brand counts with its own label.
-- Answers: "how did brand X's volume and net sentiment move, and on which days?" (the dashboard's overview)
-- net_sentiment = (positive - negative) / (positive + negative), NULL with neither; the dashboard
-- adds its 95% Wilson interval from these counts.
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC; a week cut by
--   them counts only its days inside), $source, $lang, $model_version (required: the version the
--   dashboard resolved), $period ('week' = ISO weeks starting Monday; anything else = days).
-- Dates are compared with created_at, not the view's day, so DuckDB skips the row groups of other days.
SELECT
    brand,
    CASE WHEN $period = 'week' THEN CAST(date_trunc('week', day) AS DATE) ELSE day END  AS period_start,
    count(*)                                                  AS posts,
    count(*) FILTER (brand_label = 'positive')                      AS positive,
    count(*) FILTER (brand_label = 'neutral')                       AS neutral,
    count(*) FILTER (brand_label = 'negative')                      AS negative,
    (count(*) FILTER (brand_label = 'positive') - count(*) FILTER (brand_label = 'negative'))
        / nullif(count(*) FILTER (brand_label IN ('positive', 'negative')), 0)                  AS net_sentiment,
    avg(brand_p_positive - brand_p_negative) AS mean_sentiment_score
FROM post_sentiment
WHERE model_version = $model_version
  AND ($brand IS NULL OR brand = $brand)
  AND ($source IS NULL OR source = $source)
  AND ($lang IS NULL OR lang = $lang)
  AND ($date_from IS NULL OR created_at >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR created_at < CAST($date_to AS DATE) + 1)
GROUP BY ALL
ORDER BY brand, period_start;
