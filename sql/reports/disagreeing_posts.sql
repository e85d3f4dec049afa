-- disagreeing_posts: the posts whose text and image point opposite ways (positive vs negative), most engaging first.
-- Answers: "show me the sarcastic posts about brand X" (e.g. positive text + a photo of a disaster).
-- text_score / image_score = p_positive - p_negative of that modality alone.
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model), $limit posts (default 20).
SELECT
    brand,
    day,
    post_id,
    text_label,
    image_label,
    label                                                           AS fused_label,
    text_p_positive - text_p_negative                               AS text_score,
    image_p_positive - image_p_negative                             AS image_score,
    coalesce(likes, 0) + coalesce(shares, 0) + coalesce(replies, 0) AS engagement,
    array_to_string(image_urls, ' ')                              AS image_urls,  -- space-separated, for CSV and tables
    text
FROM post_sentiment
WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
  AND ($brand IS NULL OR brand = $brand)
  AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
  AND text_label IN ('positive', 'negative') AND image_label IN ('positive', 'negative') AND text_label <> image_label
ORDER BY engagement DESC, post_id
LIMIT coalesce(CAST($limit AS INTEGER), 20);
