-- daily_brand_sentiment: per brand and day, how many posts and how they split by sentiment.
-- Answers: "is brand X's sentiment getting better or worse, day by day?"
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive dates).
-- net_sentiment = (positive - negative) / (positive + negative); NULL on a day with neither.
SELECT
    brand,
    day,
    count(*)                                              AS posts,
    count(*) FILTER (label = 'positive')                  AS positive,
    count(*) FILTER (label = 'neutral')                   AS neutral,
    count(*) FILTER (label = 'negative')                  AS negative,
    round(count(*) FILTER (label = 'positive') / count(*), 4) AS positive_share,
    round(count(*) FILTER (label = 'neutral')  / count(*), 4) AS neutral_share,
    round(count(*) FILTER (label = 'negative') / count(*), 4) AS negative_share,
    round(
        (count(*) FILTER (label = 'positive') - count(*) FILTER (label = 'negative'))
        / nullif(count(*) FILTER (label IN ('positive', 'negative')), 0),
        4
    )                                                     AS net_sentiment,
    round(avg(sentiment_score), 4)                        AS mean_sentiment_score
FROM post_sentiment
WHERE ($brand IS NULL OR brand = $brand)
  AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
GROUP BY brand, day
ORDER BY brand, day;
