"""Helpers of benches/targets.sh that need Python packages (run in the venv it creates).

  producers.py xlsxwriter CSV OUT.xlsx   the CSV's rows as a workbook written by XlsxWriter
                                         (shared strings, as Excel and most exporters write)
  producers.py polars-copy XLSX URL TABLE
                                         polars read_excel(engine="calamine"), then one
                                         psycopg COPY of the frame as CSV: the Python stack's
                                         usual load path
"""
import csv
import io
import sys


def write_xlsxwriter(csv_path, out_path):
    import xlsxwriter

    workbook = xlsxwriter.Workbook(out_path)
    sheet = workbook.add_worksheet("businesses")
    with open(csv_path, newline="", encoding="utf-8") as source:
        for row_index, row in enumerate(csv.reader(source)):
            for column_index, value in enumerate(row):
                if value != "":
                    sheet.write_string(row_index, column_index, value)
    workbook.close()


def polars_copy(xlsx_path, url, table):
    import polars
    import psycopg

    frame = polars.read_excel(xlsx_path, engine="calamine")
    # the sheet's header cells are the table's column names, lowercased
    columns = ", ".join('"' + name.lower().replace('"', '""') + '"' for name in frame.columns)
    buffer = io.StringIO()
    frame.write_csv(buffer, include_header=False)
    with psycopg.connect(url) as connection:
        with connection.cursor() as cursor:
            with cursor.copy(f'COPY "{table}" ({columns}) FROM STDIN (FORMAT csv)') as copy:
                copy.write(buffer.getvalue())


if __name__ == "__main__":
    if sys.argv[1:2] == ["xlsxwriter"] and len(sys.argv) == 4:
        write_xlsxwriter(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["polars-copy"] and len(sys.argv) == 5:
        polars_copy(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
