-- rejected_rows: data quality: input rows the pipeline refused, per run, dump and reason, with one example.
-- Answers: "how much input did we lose, and why?"
-- Parameters (NULL = no filter): $brand (read from the raw row when it is JSON: its `brand` or `brands`, a
--   name or a list, ignoring case and surrounding white space; rows without a readable brand drop out under a
--   brand filter), $date_from, $date_to (inclusive days, UTC, of
--   rejected_at), $model_version (the rejecting run's model; NULL = every run).
SELECT
    r.run_id,
    r.dump,
    runs.model_version,
    r.reason,
    count(*)            AS rows,
    min(r.line)         AS first_line,
    any_value(r.raw)    AS example_raw
FROM rejected_posts r
LEFT JOIN runs USING (run_id)
WHERE ($model_version IS NULL OR runs.model_version = $model_version)
  AND ($brand IS NULL OR CASE WHEN json_valid(r.raw) THEN list_contains(list_transform(list_concat(
        [json_extract_string(r.raw, '$.brand'), json_extract_string(r.raw, '$.brands')],
        json_extract_string(r.raw, '$.brand[*]'), json_extract_string(r.raw, '$.brands[*]')),
        lambda b: lower(regexp_replace(b, '^\s+|\s+$', '', 'g'))), lower(regexp_replace($brand, '^\s+|\s+$', '', 'g'))) END)
  AND ($date_from IS NULL OR CAST(r.rejected_at AS DATE) >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR CAST(r.rejected_at AS DATE) <= CAST($date_to AS DATE))
GROUP BY ALL
ORDER BY r.run_id, rows DESC, r.reason;
