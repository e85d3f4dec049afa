-- brand_prevalence: per brand and period, the estimated shares of positive, neutral and negative posts toward the brand, with 95% intervals.
-- Answers: "what share of what people said about brand X was negative, and how sure is that?"
-- Counted labels are biased toward the class mix the model was trained on (docs/analysts.md); the
-- shares here are estimated from each post's probabilities toward the brand, corrected for that
-- (mmsa.quantify, with the model's statistics from table `models`; `method` names the estimator),
-- with 95% bootstrap intervals over the period's posts: a period with few posts gets a wide one.
-- The counted shares of brand_label stand beside them.
-- Only (post, brand) rows with a brand label count: untagged posts never, nor posts whose label is
-- NULL (e.g. in a language the model does not cover).
-- Parameters: $per   day | week | month | total (default week; weeks start on Monday),
--   $brand, $date_from, $date_to (inclusive days, UTC; a period cut by them counts only its days
--   inside, and its period_start / period_end say so), $model_version (NULL = the most recently used model),
--   $source, $lang (NULL = every platform / language; else the posts of that platform / language only).
-- net_sentiment = positive_share - negative_share, from the estimates (-1 to +1), with its interval;
-- counted_net_sentiment is the same from the counted labels.
WITH settings AS (
    SELECT CASE WHEN coalesce($per, 'week') IN ('day', 'week', 'month', 'total') THEN coalesce($per, 'week')
                ELSE error('per must be day, week, month or total, not ' || $per) END AS per
),
posts AS (
    SELECT
        brand,
        CASE WHEN per = 'total' THEN NULL ELSE CAST(date_trunc(per, day) AS DATE) END AS period,
        day,
        post_id,
        brand_label,
        [brand_p_positive, brand_p_neutral, brand_p_negative] AS p,
        model_version
    FROM post_sentiment, settings
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND brand IS NOT NULL
      AND brand_label IS NOT NULL
      AND ($brand IS NULL OR brand = $brand)
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
)
SELECT
    brand,
    CASE per WHEN 'total' THEN min(day) ELSE greatest(period, CAST($date_from AS DATE)) END AS period_start,
    CASE per WHEN 'total' THEN max(day) WHEN 'day' THEN period
             ELSE least(CAST(period + CAST('1 ' || per AS INTERVAL) - INTERVAL 1 DAY AS DATE), CAST($date_to AS DATE))
    END                                                                             AS period_end,
    count(*)                                                                        AS posts,
    list(p ORDER BY post_id)                                                        AS probabilities,
    any_value(m.quantification)                                                     AS quantification,
    count(*) FILTER (brand_label = 'positive') / count(*)                           AS counted_positive_share,
    count(*) FILTER (brand_label = 'neutral') / count(*)                            AS counted_neutral_share,
    count(*) FILTER (brand_label = 'negative') / count(*)                           AS counted_negative_share,
    (count(*) FILTER (brand_label = 'positive') - count(*) FILTER (brand_label = 'negative')) / count(*)
                                                                                    AS counted_net_sentiment
FROM posts LEFT JOIN models m USING (model_version), settings
GROUP BY brand, period, per
ORDER BY brand, period_start;
